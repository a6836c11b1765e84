"""Pure parts of the reward workers: event parsing, signals, queues, the beat schedule."""
from __future__ import annotations

import pytest

from core.settings import Settings
from worker import queues
from worker.beat_schedule import build_schedule
from worker.rewards.config import RewardConfig
from worker.rewards.function import compute_reward
from worker.rewards.signals import PoisonEvent, choose_pair, parse_event, reply_facts, signals_of, vote_of


def fields(**kw) -> dict:
    base = {"event_id": "ev_1", "kind": "thumbs", "value": "1", "reply_id": "rep_a", "session_id": "s1",
            "user_id": "u1", "server_time": "100.5", "since_reply_end_ms": "1500"}
    return {**base, **{k: str(v) for k, v in kw.items()}}


def test_stream_values_are_decoded():
    ev = parse_event("1-0", fields())
    assert (ev.kind, ev.value, ev.server_time, ev.since_reply_end_s) == ("thumbs", 1, 100.5, 1.5)
    assert vote_of(ev) == ["thumbs", 1, 1.5]
    assert signals_of(ev) == [("rep_a", {"kind": "thumbs", "value": 1, "ts": 100.5, "user_id": "u1",
                                         "event_id": "ev_1"})]


def test_choose_rewards_both_candidates_and_yields_one_pair():
    ev = parse_event("1-0", fields(kind="choose", value="rep_b"))
    sigs = dict(signals_of(ev))
    assert sigs["rep_a"]["value"] == "chosen" and sigs["rep_b"]["value"] == "rejected"
    assert choose_pair(ev) == {"chosen_id": "rep_a", "rejected_id": "rep_b", "source": "choose",
                               "user_id": "u1", "session_id": "s1"}
    facts = reply_facts({"reply_id": "rep_b", "text": "Some answer here.", "ended_at": "99", "user_id": "u1"})
    assert compute_reward(facts, [sigs["rep_b"]], RewardConfig()).components == {"choose": -1.0}


def test_continuation_gap_reaches_the_reward_rule():
    ev = parse_event("1-0", fields(kind="continuation", value="700.0"))
    (rid, sig), = signals_of(ev)
    facts = reply_facts({"reply_id": rid, "text": "An answer.", "ended_at": "0", "user_id": "u1"})
    out = compute_reward(facts, [sig], RewardConfig(continuation_window_s=600))
    assert "continuation" not in out.components and "outside the 600 s window" in out.notes[0]


@pytest.mark.parametrize("bad, why", [
    ({"kind": "bogus"}, "unknown kind"),
    ({"reply_id": ""}, "without reply_id"),
    ({"event_id": ""}, "without event_id"),
    ({"server_time": "soon"}, "not a number"),
])
def test_poison_events_are_named(bad, why):
    with pytest.raises(PoisonEvent, match=why):
        parse_event("7-0", fields(**bad))


def test_choose_without_the_other_candidate_is_poison():
    with pytest.raises(PoisonEvent, match="other candidate"):
        signals_of(parse_event("1-0", fields(kind="choose", value="rep_a")))


def test_queues_are_checked():
    assert queues.parse_queues("rewards, ops") == ["rewards", "ops"]
    with pytest.raises(ValueError, match="rewards,learn,ops"):
        queues.parse_queues("rewards,fast")


def test_one_schedule_holds_every_periodic_task():
    s = Settings(update_every_s=123, worker_finalize_every_s=2.5)
    sched = build_schedule(s)
    tasks = {e["task"]: e["schedule"].total_seconds() for e in sched.values()}
    assert tasks["learner.tasks.maybe_train"] == 123 and tasks["worker.tasks.finalize_due"] == 2.5
    assert {"worker.tasks.process_events", "worker.tasks.derive_abandonment", "worker.tasks.reclaim_stale"} <= set(tasks)
    assert all(queues.ROUTES.get(t) or t.startswith("learner.tasks.") for t in tasks)


def test_worker_settings_are_validated():
    with pytest.raises(ValueError, match="REWARDLOOP_WORKER_MAX_DELIVERIES"):
        Settings(worker_max_deliveries=0)
    with pytest.raises(ValueError, match="REWARDLOOP_WORKER_RECLAIM_IDLE_S"):
        Settings(worker_reclaim_idle_s=0)
