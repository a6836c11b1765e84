"""The pure reward function: every component, guards, sum and clipping, pairs, caps, anomalies."""

import dataclasses

import pytest

from worker.rewards.batches import anomaly_weight, cap_user_share
from worker.rewards.config import RewardConfig
from worker.rewards.function import ReplyFacts, Signal, compute_reward, finalize_state, find_safety_words, is_final, repeated_ngram_fraction
from worker.rewards.pairs import PreferencePair, choices_from_outcome, is_kept, preference_pairs

CFG = RewardConfig()
T0 = 43_200.0  # 12:00:00 UTC: explain lines show clock times
# 23 distinct words: expected reading time at 230 wpm is exactly 6 s
TEXT = (
    "Paris is the capital of France and its largest city, famous for the Louvre, "
    "cafes, boulevards and the Eiffel Tower built in 1889."
)
assert len(TEXT.split()) == 23


def facts(text=TEXT, finish="stop", user="u1"):
    return ReplyFacts("r1", text, 30, finish, T0, user, "v1")


def sig(kind, value=None, after=1.0, user="u1", **extra):
    return Signal(kind, value, T0 + after, user, extra)


def reward(signals=(), f=None, cfg=CFG, **kw):
    return compute_reward(f or facts(), list(signals), cfg, **kw)


# ---------------------------------------------------------------- no signal


def test_no_signal_no_guard_gives_zero_and_no_signal():
    b = reward()
    assert b.components == {} and b.total == 0.0 and b.raw_sum == 0.0
    assert b.has_signal is False
    assert finalize_state(b.has_signal, CFG) == ("excluded", None)


# ---------------------------------------------------------------- each user component


@pytest.mark.parametrize("value, expected", [(1, 1.0), (-1, -1.0)])
def test_thumbs(value, expected):
    b = reward([sig("thumbs", value, after=3)])
    assert b.components == {"thumbs": expected} and b.total == expected and b.has_signal
    assert b.explain()[0] == f"thumbs        {expected:+.3f}  (last thumbs: {value:+d} at 12:00:03)"


def test_last_thumbs_wins_by_time_not_by_list_order():
    b = reward([sig("thumbs", -1, after=5), sig("thumbs", 1, after=3)])
    assert b.components["thumbs"] == -1.0
    assert reward([sig("thumbs", -1, after=3), sig("thumbs", 1, after=5)]).components["thumbs"] == 1.0


def test_withdrawn_thumbs_is_no_signal():
    b = reward([sig("thumbs", 1, after=1), sig("thumbs", 0, after=2)])
    assert "thumbs" not in b.components and not b.has_signal
    assert any("withdrawn" in n for n in b.notes)


@pytest.mark.parametrize("r, expected", [(1, -1.0), (2, -0.5), (3, 0.0), (4, 0.5), (5, 1.0)])
def test_rating_is_r_minus_3_over_2(r, expected):
    b = reward([sig("rating", r)])
    assert b.components == {"rating": expected}
    assert b.has_signal  # a neutral rating is still a signal


def test_last_rating_wins_and_out_of_range_is_ignored():
    b = reward([sig("rating", 1, after=1), sig("rating", 5, after=2), sig("rating", 7, after=3)])
    assert b.components["rating"] == 1.0
    assert any("rating with invalid value 7" in n for n in b.notes)


@pytest.mark.parametrize("value, expected", [("chosen", 1.0), ("rejected", -1.0)])
def test_choose(value, expected):
    assert reward([sig("choose", value)]).components == {"choose": expected}


def test_choose_last_pick_wins():
    assert reward([sig("choose", "rejected", after=1), sig("choose", "chosen", after=2)]).components["choose"] == 1.0


def test_copy_counts_once():
    assert reward([sig("copy")]).components == {"copy": 0.5}
    b = reward([sig("copy", after=1), sig("copy", after=2), sig("copy", after=3)])
    assert b.components == {"copy": 0.5} and b.total == 0.5


def test_regenerate():
    assert reward([sig("regenerate")]).components == {"regenerate": -0.5}


def test_continuation_within_window_from_time():
    b = reward([sig("continuation", after=30)])
    assert b.components == {"continuation": pytest.approx(0.3)}
    assert "30 s after the reply" in b.details["continuation"]


def test_continuation_gap_from_extra_and_outside_window():
    assert "continuation" not in reward([sig("continuation", after=700)]).components
    b = reward([sig("continuation", after=5, gap_s=900)])  # gap_s wins over the timestamp
    assert "continuation" not in b.components and not b.has_signal
    assert any("outside the 600 s window" in n for n in b.notes)
    cfg = RewardConfig(continuation_window_s=1000)
    assert reward([sig("continuation", after=5, gap_s=900)], cfg=cfg).components["continuation"] == pytest.approx(0.3)


@pytest.mark.parametrize(
    "visible_ms, expected",
    [
        (12_000, 0.1),  # twice the 6 s reading time: log2 = +1
        (6_000, 0.0),  # exactly the reading time
        (3_000, -0.1),  # half: log2 = -1
        (8_485.28, 0.05),  # sqrt(2) times: log2 = +0.5
        (600_000, 0.1),  # clipped at +1
        (100, -0.1),  # clipped at -1
        (0, -0.1),  # never visible
    ],
)
def test_dwell_log_ratio_over_reading_time(visible_ms, expected):
    b = reward([sig("dwell", visible_ms)])
    assert b.components["dwell"] == pytest.approx(expected, abs=1e-6)
    assert b.has_signal


def test_dwell_longest_report_counts_and_reading_speed_is_configurable():
    b = reward([sig("dwell", 12_000, after=1), sig("dwell", 3_000, after=2)])
    assert b.components["dwell"] == pytest.approx(0.1)
    # at 115 wpm the same 23 words take 12 s, so 12 s visible is log2 = 0
    slow = RewardConfig(reading_wpm=115)
    assert reward([sig("dwell", 12_000)], cfg=slow).components["dwell"] == pytest.approx(0.0)


def test_dwell_on_empty_reply_is_ignored():
    b = reward([sig("dwell", 5_000)], f=facts(text=""))
    assert "dwell" not in b.components and not b.has_signal


def test_abandon_alone_and_void_after_an_action():
    assert reward([sig("abandon")]).components == {"abandon": -0.1}
    b = reward([sig("thumbs", 1), sig("abandon", after=60)])
    assert b.components == {"thumbs": 1.0}
    assert reward([sig("dwell", 6_000), sig("abandon")]).components["abandon"] == -0.1  # dwell is not an action
    assert reward([sig("abandon")], cfg=RewardConfig(abandon_weight=0.3)).components == {"abandon": -0.3}


def test_each_weight_is_configurable_and_zero_switches_off():
    cfg = RewardConfig(copy_weight=0.2, thumbs_weight=0.0, regenerate_weight=0.8)
    b = reward([sig("copy"), sig("thumbs", 1), sig("regenerate")], cfg=cfg)
    assert b.components == {"copy": 0.2, "regenerate": -0.8}
    assert not reward([sig("thumbs", 1)], cfg=cfg).has_signal


def test_signals_of_other_users_and_unknown_kinds_are_ignored():
    b = reward([sig("thumbs", -1, user="u2"), sig("copy"), sig("wink")])
    assert b.components == {"copy": 0.5}
    assert any("other than 'u1'" in n for n in b.notes)
    assert any("unknown kind 'wink'" in n for n in b.notes)


def test_plain_dict_signals_are_accepted():
    b = reward([{"kind": "thumbs", "value": "-1", "ts": T0 + 1, "user_id": "u1"}])
    assert b.components == {"thumbs": -1.0}


# ---------------------------------------------------------------- sum and clipping


def test_components_sum():
    b = reward([sig("thumbs", 1), sig("regenerate"), sig("continuation", after=10)])
    assert b.raw_sum == pytest.approx(1.0 - 0.5 + 0.3)
    assert b.total == pytest.approx(0.8)
    assert b.explain()[-1].startswith("total") and "+0.800" in b.explain()[-1]


def test_sum_is_clipped_to_plus_minus_one():
    hi = reward([sig("thumbs", 1), sig("rating", 5), sig("copy")])
    assert hi.raw_sum == pytest.approx(2.5) and hi.total == 1.0
    assert hi.explain()[-1] == "total clipped to [-1, 1]: +2.500 -> +1.000"
    lo = reward([sig("thumbs", -1), sig("choose", "rejected"), sig("regenerate")])
    assert lo.raw_sum == pytest.approx(-2.5) and lo.total == -1.0


def test_user_weight_scales_user_signals_but_not_guards():
    b = reward([sig("thumbs", 1), sig("copy")], f=facts(finish="length"), user_weight=0.5)
    assert b.components == {"thumbs": 0.5, "copy": 0.25, "truncated": -0.3}
    assert b.total == pytest.approx(0.45)
    lines = b.explain()
    assert "x user weight 0.50" in lines[0] and "user weight" not in lines[2]
    assert any(line.startswith("user weight 0.50 scales") for line in lines)
    with pytest.raises(ValueError, match="user_weight"):
        reward(user_weight=-1.0)


def test_as_dict_for_the_ledger():
    d = reward([sig("thumbs", 1)]).as_dict()
    assert d == {"components": {"thumbs": 1.0}, "total": 1.0, "raw_sum": 1.0, "has_signal": True, "user_weight": 1.0,
                 "unsafe": None, "vetoed": False}


# ---------------------------------------------------------------- guards

LOOP = "I am sorry I cannot help with that. " * 6


def test_repeated_ngram_fraction_numbers():
    # 3-grams: abc bca cab abc -> 1 repeat of 4
    assert repeated_ngram_fraction("a b c a b c", 3) == 0.25
    assert repeated_ngram_fraction(TEXT, 3) == 0.0
    assert repeated_ngram_fraction("too short", 3) == 0.0
    assert repeated_ngram_fraction(LOOP, 3) > 0.7


def test_repetition_guard_triggers_and_does_not():
    b = reward(f=facts(text=LOOP))
    assert b.components == {"repetition": -0.5} and not b.has_signal
    assert "repetition" not in reward().components
    # the threshold is strict: exactly at it does not fire
    assert "repetition" not in reward(f=facts(text="a b c a b c"), cfg=RewardConfig(repetition_threshold=0.25)).components
    assert "repetition" in reward(f=facts(text="a b c a b c"), cfg=RewardConfig(repetition_threshold=0.2)).components


@pytest.mark.parametrize("text, finish", [("", "stop"), ("   \n", "stop"), ("", "length"), ("", "error")])
def test_empty_reply_guard(text, finish):
    assert reward(f=facts(text=text, finish=finish)).components == {"empty": -1.0}


@pytest.mark.parametrize("finish, fires", [("length", True), ("error", True), ("stop", False), ("cancelled", False)])
def test_truncated_guard(finish, fires):
    b = reward(f=facts(finish=finish))
    assert b.components == ({"truncated": -0.3} if fires else {})


def test_safety_words_whole_words_any_case():
    words = ("darn", "blow up")
    assert find_safety_words("Well DARN it.", words) == ["darn"]
    assert find_safety_words("She was darning socks.", words) == []  # not a prefix...
    assert find_safety_words("First class seats", ("ass",)) == []  # ...nor a suffix
    assert find_safety_words("Do not blow   up the lab; darn.", words) == ["blow up", "darn"]
    assert find_safety_words("anything at all", ()) == []


def test_safety_guard_triggers_and_does_not():
    cfg = RewardConfig(safety_words=("darn",))
    b = reward(f=facts(text="Oh darn, that failed."), cfg=cfg)
    assert b.components == {"safety": -1.0}
    assert b.details["safety"] == "safety words: darn"
    assert reward(f=facts(text="Oh darn, that failed.")).components == {}  # empty list: off
    assert reward(f=facts(text="Darning is a skill."), cfg=cfg).components == {}


def test_guards_do_not_count_as_signal_and_add_to_user_signals():
    b = reward([sig("thumbs", 1)], f=facts(text=LOOP, finish="length"))
    assert b.components == {"thumbs": 1.0, "repetition": -0.5, "truncated": -0.3}
    assert b.total == pytest.approx(0.2)
    assert not reward(f=facts(text=LOOP)).has_signal


# ---------------------------------------------------------------- finality


def test_finalize_state_per_policy():
    assert finalize_state(True, CFG, total=0.4) == ("rewarded", 0.4)
    assert finalize_state(False, CFG) == ("excluded", None)
    cfg = RewardConfig(no_signal_policy="default", default_reward=-0.2)
    assert finalize_state(False, cfg) == ("defaulted", -0.2)
    assert finalize_state(True, cfg, total=0.9) == ("rewarded", 0.9)


def test_is_final_after_wait_window_or_session_end():
    assert not is_final(T0, T0 + 599, CFG)
    assert is_final(T0, T0 + 600, CFG)
    assert is_final(T0, T0 + 5, CFG, session_ended=True)


# ---------------------------------------------------------------- preference pairs


def test_pairs_from_choose():
    choices = choices_from_outcome(["a", "b"], "b")
    assert choices == [("b", "a")]
    assert preference_pairs(choices=choices) == [PreferencePair("b", "a", "choose")]
    assert choices_from_outcome(["a", "b"], "zzz") == []


def test_pairs_from_regenerate_only_when_the_new_reply_is_kept():
    links = [("old1", "new1"), ("old2", "new2")]
    assert preference_pairs(regenerations=links, kept={"new1"}) == [PreferencePair("new1", "old1", "regenerate")]
    assert preference_pairs(regenerations=links, kept=set()) == []


def test_pairs_are_unique_and_choose_wins_a_conflict():
    pairs = preference_pairs(
        choices=[("a", "b"), ("a", "b"), ("c", "c")],
        regenerations=[("a", "b")],  # b replaced a and was kept: contradicts the choose
        kept={"b"},
    )
    assert pairs == [PreferencePair("a", "b", "choose")]


@pytest.mark.parametrize(
    "signals, kept",
    [
        ([sig("thumbs", 1)], True),
        ([sig("rating", 4)], True),
        ([sig("rating", 3)], False),
        ([sig("copy")], True),
        ([sig("choose", "chosen")], True),
        ([sig("thumbs", 1, after=1), sig("thumbs", -1, after=2)], False),  # last thumbs wins
        ([sig("copy"), sig("regenerate", after=2)], False),  # replaced again: not kept
        ([sig("dwell", 9_000), sig("continuation")], False),  # implicit only
        ([], False),
    ],
)
def test_is_kept(signals, kept):
    assert is_kept(signals) is kept


def test_regenerate_then_thumbs_up_end_to_end():
    new_signals = [sig("thumbs", 1, after=20)]
    old = reward([sig("regenerate", after=10)])
    assert old.components == {"regenerate": -0.5}
    pairs = preference_pairs(regenerations=[("r_old", "r_new")], kept={"r_new"} if is_kept(new_signals) else set())
    assert pairs == [PreferencePair("r_new", "r_old", "regenerate")]


# ---------------------------------------------------------------- user share cap


def by_user(sample):
    return sample[0]


def test_cap_user_share_keeps_earliest_and_order():
    batch = [("a", i) for i in range(7)] + [("b", 0), ("c", 0), ("d", 0)]
    kept = cap_user_share(batch, by_user, 0.25)
    assert kept == [("a", 0), ("b", 0), ("c", 0), ("d", 0)]


def test_cap_user_share_largest_cap_that_fits():
    batch = [(u, i) for u, n in [("a", 6), ("b", 4), ("c", 4), ("d", 4), ("e", 2)] for i in range(n)]
    kept = cap_user_share(batch, by_user, 0.25)
    counts = {u: sum(1 for s in kept if s[0] == u) for u in "abcde"}
    assert counts == {"a": 4, "b": 4, "c": 4, "d": 4, "e": 2}  # cap 5 would give a 5/19 > 25 %
    assert max(counts.values()) / len(kept) <= 0.25
    assert [s for s in kept if s[0] == "a"] == [("a", i) for i in range(4)]


def test_cap_user_share_with_too_few_users_evens_out_and_keeps_one_each():
    # two users can never be under 25 %; the tightest possible (50 %) is used
    batch = [("a", i) for i in range(10)] + [("b", i) for i in range(2)]
    kept = cap_user_share(batch, by_user, 0.25)
    assert kept == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert len(cap_user_share([("a", 0)], by_user, 0.25)) == 1


def test_cap_user_share_edges():
    batch = [("a", 0), ("a", 1), ("b", 0)]
    assert cap_user_share(batch, by_user, 1.0) == batch
    assert cap_user_share([], by_user, 0.25) == []
    with pytest.raises(ValueError, match="max_share"):
        cap_user_share(batch, by_user, 0.0)


# ---------------------------------------------------------------- anomalous users


def test_anomaly_fast_same_sign_votes_are_flagged():
    events = [("thumbs", 1, 0.3)] * 5
    weight, reason = anomaly_weight(events, CFG)
    assert weight == 0.25
    assert "last 5 votes all positive" in reason


@pytest.mark.parametrize(
    "events",
    [
        [("thumbs", 1, 0.3)] * 4,  # too few
        [("thumbs", 1, 0.3)] * 4 + [("thumbs", 1, 5.0)],  # one read first
        [("thumbs", 1, 0.3)] * 4 + [("thumbs", -1, 0.3)],  # mixed signs
        [("thumbs", -1, 0.2)] * 4 + [("rating", 3, 0.2)],  # a neutral rating breaks the run
        [("thumbs", 1, None)] * 5,  # unknown timing is not fast
        [("thumbs", 1, 0.1)] * 5 + [("thumbs", 1, 30.0)],  # only the LAST votes count
    ],
)
def test_anomaly_not_flagged(events):
    assert anomaly_weight(events, CFG) == (1.0, None)


def test_anomaly_counts_ratings_and_skips_other_kinds():
    events = [("thumbs", -1, 0.5), ("copy", None, 0.1), ("rating", 1, 0.2), ("thumbs", -1, -0.5),
              ("rating", 2, 0.9), ("thumbs", -1, 1.0)]  # fmt: skip
    weight, reason = anomaly_weight(events, CFG)
    assert weight == 0.25 and "negative" in reason
    cfg = RewardConfig(anomaly_min_events=6, anomaly_weight=0.5)
    assert anomaly_weight(events, cfg) == (1.0, None)  # only 5 votes
    assert anomaly_weight(events + [("thumbs", -1, 0.1)], cfg)[0] == 0.5


def test_anomaly_weight_feeds_the_reward():
    weight, _ = anomaly_weight([("thumbs", 1, 0.2)] * 5, CFG)
    assert reward([sig("thumbs", 1)], user_weight=weight).total == pytest.approx(0.25)


def test_config_replace_keeps_reward_pure():
    # same inputs, same output: nothing hidden (no clock, no randomness)
    signals = [sig("thumbs", 1), sig("dwell", 7_000), sig("continuation", after=40)]
    assert reward(signals) == reward(signals)
    assert reward(signals, cfg=dataclasses.replace(CFG, dwell_weight=0.0)).components.keys() == {"thumbs", "continuation"}
