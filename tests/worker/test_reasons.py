"""The conversation signals and reason tags in the pure reward function: sibling preference,
edited questions, tag components, an `unsafe` report driving the safety guard; their events
parsed into signals and pairs; the TOML names every new weight."""
import pytest

from core import feedback_tags
from worker.rewards.config import RewardConfig, load_reward_config
from worker.rewards.function import ReplyFacts, Signal, compute_reward
from worker.rewards.pairs import is_kept
from worker.rewards.signals import PoisonEvent, choose_pair, parse_event, signals_of

CFG = RewardConfig()
T0 = 43_200.0  # 12:00:00 UTC


def facts(text="A fine answer with several words in it.", user="u1"):
    return ReplyFacts("r1", text, 12, "stop", T0, user, "1")


def sig(kind, value=None, after=1.0, user="u1", **extra):
    return Signal(kind, value, T0 + after, user, extra)


def test_sibling_preferred_and_other_are_named_components_last_one_wins():
    b = compute_reward(facts(), [sig("sibling", "preferred", other="r2", how="continued from it")], CFG)
    assert b.components == {"sibling": 0.5} and b.has_signal
    assert "preferred over its sibling r2 (the user continued from it)" in b.explain()[0]
    b = compute_reward(facts(), [sig("sibling", "preferred", after=1, other="r2"),
                                 sig("sibling", "other", after=5, other="r3", how="copied it")], CFG)
    assert b.components == {"sibling": -0.5}
    assert "its sibling r3 was preferred (the user copied it)" in b.explain()[0]
    bad = compute_reward(facts(), [sig("sibling", "best")], CFG)
    assert bad.components == {} and any("sibling" in n for n in bad.notes)


def test_an_edited_question_marks_the_earlier_reply():
    b = compute_reward(facts(), [sig("edited", "m2", after=7)], CFG)
    assert b.components == {"edited": -0.5} and b.has_signal
    assert b.explain()[0].startswith("edited") and "12:00:07" in b.explain()[0]


def test_reason_tags_become_weighted_components_of_the_last_tagged_feedback():
    down = sig("reasons", after=2, tags=["inaccurate", "too_long"], comment="wrong year")
    b = compute_reward(facts(), [sig("thumbs", -1), down], CFG)
    assert b.components == {"thumbs": -1.0, "tag_inaccurate": -0.3, "tag_too_long": -0.1}
    assert b.total == -1.0 and b.raw_sum == pytest.approx(-1.4)
    assert any(line.startswith("tag_inaccurate") and "Not accurate" in line for line in b.explain())
    # a later form replaces the earlier one; tags may ride on a thumbs event too
    up = sig("thumbs", 1, after=9, tags=["helpful", "clear"])
    b = compute_reward(facts(), [down, up], CFG)
    assert b.components == {"thumbs": 1.0, "tag_helpful": 0.2, "tag_clear": 0.1}
    # user weight scales tags like every user signal; weight 0 switches one off
    b = compute_reward(facts(), [down], RewardConfig(tag_too_long_weight=0.0), user_weight=0.5)
    assert b.components == {"tag_inaccurate": pytest.approx(-0.15)}


def test_an_unsafe_report_drives_the_safety_guard_and_counts_as_a_signal():
    report = sig("reasons", after=4, tags=["unsafe"])
    b = compute_reward(facts(), [sig("thumbs", 1), report], CFG)
    assert b.components == {"thumbs": 1.0, "safety": -1.0} and b.total == -1.0   # vetoed: unsafe level 1
    assert "reported it unsafe or harmful at 12:00:04" in b.details["safety"]
    alone = compute_reward(facts(), [report], CFG)
    assert alone.has_signal and alone.components == {"safety": -1.0}
    # another user's report does not count: a reply is judged by the person it answered
    assert compute_reward(facts(), [sig("reasons", user="u2", tags=["unsafe"])], CFG).components == {}
    # abandon is void once the user acted (a report is an action)
    b = compute_reward(facts(), [report, sig("abandon", after=900)], CFG)
    assert "abandon" not in b.components


def ev(kind, value=None, **extra):
    fields = {"kind": kind, "reply_id": "r1", "session_id": "s1", "user_id": "u1", "event_id": "e1",
              "server_time": repr(T0), **extra}
    if value is not None:
        fields["value"] = value
    return parse_event("1-0", fields)


def test_events_become_signals_and_pairs():
    [(a, pa), (b, pb)] = signals_of(ev("sibling", "r2", how="copied it", derived="1"))
    assert (a, pa["value"], pa["extra"]) == ("r1", "preferred", {"other": "r2", "how": "copied it"})
    assert (b, pb["value"]) == ("r2", "other")
    assert choose_pair(ev("sibling", "r2")) == {"chosen_id": "r1", "rejected_id": "r2", "source": "sibling",
                                                "user_id": "u1", "session_id": "s1"}
    with pytest.raises(PoisonEvent):
        signals_of(ev("sibling", "r1"))
    [(rid, s)] = signals_of(ev("reasons", tags='["unsafe", "other"]', comment="rude"))
    assert rid == "r1" and s["extra"] == {"tags": ["unsafe", "other"], "comment": "rude"}
    [(_, s)] = signals_of(ev("edited", "m2"))
    assert s["kind"] == "edited" and s["value"] == "m2"
    assert is_kept([sig("sibling", "preferred")]) and not is_kept([sig("copy"), sig("edited")])


def test_the_default_toml_names_every_new_weight():
    cfg = load_reward_config(None)
    assert cfg == RewardConfig()
    for tag in feedback_tags.TAGS:
        if tag.name != feedback_tags.UNSAFE:
            assert getattr(cfg, f"tag_{tag.name}_weight") > 0
    assert cfg.sibling_weight == 0.5 and cfg.edited_weight == 0.5


def test_tags_and_comments_are_validated():
    assert feedback_tags.check_tags(["too_long", "too_long", "other"], "  meh  ", -1) == (("too_long", "other"), "meh")
    for tags, comment, polarity, fragment in [
        (["nonsense"], None, None, "unknown tag"), (["helpful", "inaccurate"], None, None, "mix"),
        (["helpful"], None, -1, "not reasons for a thumbs-down"), ("helpful", None, None, "list"),
        ([], "x" * (feedback_tags.MAX_COMMENT_CHARS + 1), None, "limit"), ([], 3, None, "string")]:
        with pytest.raises(feedback_tags.TagError, match=fragment):
            feedback_tags.check_tags(tags, comment, polarity)
