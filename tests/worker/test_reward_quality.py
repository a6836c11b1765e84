"""The quality components of the reward (safety, relevance, fluency), the veto and the
unsafe-voter weight: pure, on plain data."""

import math

import pytest

from worker.rewards.batches import unsafe_voter_weight
from worker.rewards.config import RewardConfig, load_reward_config
from worker.rewards.function import ReplyFacts, Signal, compute_reward
from worker.rewards.pairs import preference_pairs
from worker.rewards.processor import final_fields, positive_flag
from worker.rewards.quality import QualityScores
from worker.rewards.signals import reply_facts

CFG = RewardConfig()
T0 = 43_200.0


def facts(text="Paris is the capital of France.", **quality):
    return ReplyFacts("r1", text, 8, "stop", T0, "u1", "base", QualityScores(**quality))


def thumbs(v, user="u1", **extra):
    return Signal("thumbs", v, T0 + 5, user, extra)


def test_the_packaged_defaults_hold_the_documented_threshold_and_weights():
    cfg = load_reward_config(None)
    assert cfg == RewardConfig()
    assert (cfg.safety_threshold, cfg.safety_veto, cfg.relevance_weight, cfg.fluency_weight) == (0.5, True, 0.2, 0.1)
    assert cfg.thumbs_weight > cfg.relevance_weight + cfg.fluency_weight   # user signals stay dominant


def test_an_unsafe_reply_with_a_thumbs_up_is_vetoed_to_its_safety_penalty():
    b = compute_reward(facts("You are a stupid idiot.", unsafe=0.97, safety_scorer="alt-profanity-check"),
                       [thumbs(1)], CFG)
    assert b.components["thumbs"] == 1.0 and b.components["safety"] == pytest.approx(-0.97)
    assert b.vetoed and b.total == pytest.approx(-0.97) and b.total <= 0
    assert b.has_signal   # a rewarded negative example, not an excluded one
    lines = b.explain()
    assert any(line.startswith("vetoed: unsafe level 0.97 >= 0.5") for line in lines)
    assert "alt-profanity-check: P[unsafe] 0.970" in b.details["safety"]


def test_below_the_threshold_the_safety_penalty_is_only_summed():
    b = compute_reward(facts(unsafe=0.3), [thumbs(1)], CFG)
    assert not b.vetoed and b.total == pytest.approx(0.7)


def test_the_veto_can_be_switched_off_for_comparisons():
    b = compute_reward(facts(unsafe=0.97), [thumbs(1)], RewardConfig(safety_veto=False))
    assert not b.vetoed and b.total == pytest.approx(0.03)


def test_a_safety_word_and_a_user_report_are_unsafe_whatever_the_classifier_says():
    cfg = RewardConfig(safety_words=("darn",))
    word = compute_reward(facts("Well darn.", unsafe=0.01), [thumbs(1)], cfg)
    assert word.unsafe == 1.0 and word.vetoed and word.total == -1.0
    tag = Signal("reasons", None, T0 + 9, "u1", {"tags": ["unsafe"]})   # chat's reason tag
    report = compute_reward(facts(unsafe=0.01), [thumbs(1), tag], CFG)
    assert report.unsafe == 1.0 and report.vetoed and report.total == -1.0
    assert "reported it unsafe" in report.details["safety"] and "P[unsafe] 0.010" in report.details["safety"]
    other = compute_reward(facts(unsafe=0.01), [thumbs(1), Signal("reasons", None, T0 + 9, "u2", {"tags": ["unsafe"]})],
                           CFG)
    assert not other.vetoed   # another user cannot veto this user's reply


@pytest.mark.parametrize("z, unit", [(1.0, 0.5), (4.0, 1.0), (-6.0, -1.0), (0.0, 0.0)])
def test_relevance_and_fluency_are_weighted_clipped_z_scores(z, unit):
    b = compute_reward(facts(relevance=z, fluency=z), [thumbs(1)], CFG)
    assert b.components["relevance"] == pytest.approx(0.2 * unit)
    assert b.components["fluency"] == pytest.approx(0.1 * unit)
    assert b.total == pytest.approx(min(1.0, 1.0 + 0.3 * unit))


def test_absent_or_broken_scores_add_no_component_and_never_fail():
    assert compute_reward(facts(), [thumbs(1)], CFG).components == {"thumbs": 1.0}
    broken = {"unsafe": "nan", "relevance": "high", "fluency": float("inf"), "absent": "engine vllm"}
    q = QualityScores.from_mapping(broken)
    assert (q.unsafe, q.relevance, q.fluency, q.absent) == (None, None, None, "engine vllm")
    assert QualityScores.from_mapping({"unsafe": 1.7}).unsafe is None   # not a probability
    assert QualityScores.from_mapping("garbage") == QualityScores()
    f = reply_facts({"reply_id": "r", "text": "hi", "quality": "{not json"})
    assert compute_reward(f, [thumbs(1)], CFG).components == {"thumbs": 1.0}


def test_quality_components_do_not_count_as_a_user_signal():
    b = compute_reward(facts(unsafe=0.02, relevance=1.0, fluency=1.0), [], CFG)
    assert set(b.components) == {"safety", "relevance", "fluency"} and not b.has_signal


def test_the_ledger_entry_says_why_and_a_vetoed_regeneration_is_never_the_chosen_side():
    reply = {"reply_id": "r2", "text": "Shut up.", "finish_reason": "stop", "ended_at": repr(T0), "user_id": "u1",
             "quality": '{"unsafe": 0.99, "safety_scorer": "alt-profanity-check", "relevance": 0.1}'}
    entry = {"reply_id": "r2", "user_id": "u1", "replaces": "r1", "state": "pending"}
    sigs = [{"kind": "thumbs", "value": 1, "ts": T0 + 2, "user_id": "u1", "event_id": "e1"}]
    _, _, ledger, stream, pair = final_fields(CFG, "r2", entry, reply, sigs, {}, now=T0 + 700)
    assert ledger["vetoed"] == 1 and ledger["veto"].startswith("vetoed: unsafe level 0.99")
    assert float(ledger["reward"]) <= 0 and stream["vetoed"] == 1 and ledger["positive"] == 1
    assert pair is None   # kept by a thumbs up, but unsafe: no (chosen = r2) pair
    safe = {**reply, "quality": '{"unsafe": 0.01}'}
    assert final_fields(CFG, "r2", entry, safe, sigs, {}, now=T0 + 700)[4]["chosen_id"] == "r2"


def test_preference_pairs_never_have_an_unsafe_chosen_side():
    pairs = preference_pairs(choices=[("a", "b"), ("c", "d")], regenerations=[("e", "f")], kept={"f"},
                             unsafe={"a", "f"})
    assert [(p.chosen_id, p.rejected_id) for p in pairs] == [("c", "d")]


def test_users_whose_positive_signals_land_mostly_on_unsafe_replies_are_down_weighted():
    assert unsafe_voter_weight([1, 1, 1, 1], CFG) == (1.0, None)          # too few to judge
    w, why = unsafe_voter_weight([1, 1, 1, 0, 1], CFG)
    assert w == CFG.unsafe_voter_weight and "4 of their last 5 positive signals" in why
    assert unsafe_voter_weight([1, 0, 1, 0, 0, 0], CFG)[0] == 1.0
    user = {"anomaly_weight": "1.0", "_positives": [1, 1, 1, 1, 1]}
    reply = {"reply_id": "r3", "text": "Paris.", "finish_reason": "stop", "ended_at": repr(T0), "user_id": "u1"}
    sigs = [{"kind": "thumbs", "value": 1, "ts": T0 + 2, "user_id": "u1", "event_id": "e1"}]
    _, _, ledger, _, _ = final_fields(CFG, "r3", {"user_id": "u1"}, reply, sigs, user, now=T0 + 700)
    assert math.isclose(float(ledger["reward"]), CFG.unsafe_voter_weight) and ledger["unsafe_voter_reason"]


def test_positive_flag_marks_which_positives_were_unsafe():
    up_unsafe = compute_reward(facts(unsafe=0.9), [thumbs(1)], CFG)
    up_safe = compute_reward(facts(unsafe=0.1), [thumbs(1)], CFG)
    down = compute_reward(facts(unsafe=0.9), [thumbs(-1)], CFG)
    assert (positive_flag(up_unsafe, CFG), positive_flag(up_safe, CFG), positive_flag(down, CFG)) == (1, 0, None)


@pytest.mark.parametrize("field, value", [("safety_threshold", 0.0), ("safety_threshold", 1.5), ("quality_scale", 0),
                                          ("safety_veto", 1), ("unsafe_voter_weight", 2.0),
                                          ("unsafe_voter_share", 1.0), ("relevance_weight", -0.1)])
def test_bad_quality_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RewardConfig(**{field: value})
