"""Reward workers under failure: a worker killed mid-batch, redelivered events, a poison
event, two beats. Real Redis, real Celery worker and beat processes, no mocks."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from core.keys import Keys
from tests.support.processes import REPO
from tests.support.records import add_replies, feedback_event, reply_event
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def stat(rdb, prefix, name) -> int:
    return int(rdb.hget(Keys(prefix).worker_stats, name) or 0)


def pending_count(rdb, prefix) -> int:
    return rdb.xpending(Keys(prefix).events, "rewarders")["pending"]


def test_killed_worker_mid_batch_loses_and_doubles_nothing(rdb, prefix, procs, worker_env, reward_toml):
    n = 1500
    # the wait window outlasts the recovery, so every thumbs counts before its reply is final
    env = worker_env(REWARDLOOP_REWARD_CONFIG=reward_toml(wait_window_s=20.0))
    rids = add_replies(rdb, prefix, n)
    events = [feedback_event(rid, "thumbs", 1 if i % 2 else -1, f"ev_{i}") for i, rid in enumerate(rids)]
    with rdb.pipeline(transaction=False) as p:
        for rid, ev in zip(rids, events):  # as the server writes them: the reply, then its feedback
            p.xadd(Keys(prefix).events, reply_event(rid))
            p.xadd(Keys(prefix).events, ev)
        p.execute()
    procs.start(env, "beat")
    # the kill must land inside a batch: one that lands between two (after an ack, before the
    # next read) leaves nothing pending and tests nothing, so kill again with a fresh worker
    for _ in range(5):
        acked = stat(rdb, prefix, "events")
        first = procs.start(env, "worker", "--queues", "rewards,ops")
        wait_for(lambda: stat(rdb, prefix, "events") > acked, 60, "the worker to ack events", procs, every=0.01)
        procs.kill9(first)
        if pending_count(rdb, prefix) > 0 or stat(rdb, prefix, "events") >= 2 * n:
            break
    assert stat(rdb, prefix, "events") < 2 * n, "the worker finished before it was killed: nothing was tested"
    assert pending_count(rdb, prefix) > 0  # the dead worker's unacked batch
    procs.start(env, "worker", "--queues", "rewards,ops")
    wait_for(lambda: stat(rdb, prefix, "events") >= 2 * n and pending_count(rdb, prefix) == 0, 90,
             "every event to be acked", procs)
    for i, rid in enumerate(rids):  # each event in the ledger exactly once
        assert rdb.hkeys(Keys(prefix).reward_signals(rid)) == [f"ev_{i}"]
    wait_for(lambda: rdb.zcard(Keys(prefix).rewards_pending) == 0, 60, "every reward to be final", procs)

    def check_exactly_once():
        for i, rid in enumerate(rids):
            assert rdb.hkeys(Keys(prefix).reward_signals(rid)) == [f"ev_{i}"]
            assert rdb.hget(Keys(prefix).reward(rid), "reward") == repr(1.0 if i % 2 else -1.0)
        finals = [f["reply_id"] for _, f in rdb.xrange(Keys(prefix).rewards)]
        assert sorted(finals) == sorted(rids)
        assert stat(rdb, prefix, "signals") == n and stat(rdb, prefix, "late_signals") == 0
    check_exactly_once()

    # the same events again: re-added to the stream, and the whole stream redelivered
    with rdb.pipeline(transaction=False) as p:
        for ev in events[:200]:
            p.xadd(Keys(prefix).events, ev)
        p.execute()
    rdb.xgroup_setid(Keys(prefix).events, "rewarders", "0")
    wait_for(lambda: stat(rdb, prefix, "events") >= 4 * n + 200 and pending_count(rdb, prefix) == 0, 60,
             "the redelivered events to be acked", procs)
    check_exactly_once()


def test_poison_event_is_dead_lettered_and_blocks_nothing(rdb, prefix, procs, worker_env, reward_toml):
    env = worker_env(REWARDLOOP_REWARD_CONFIG=reward_toml(wait_window_s=0.5), REWARDLOOP_WORKER_MAX_DELIVERIES=2,
                     REWARDLOOP_WORKER_RECLAIM_IDLE_S=0.5)
    rids = add_replies(rdb, prefix, 3)
    for rid in rids:
        rdb.xadd(Keys(prefix).events, reply_event(rid))
    rdb.xadd(Keys(prefix).events, feedback_event(rids[0], "thumbs", 1, "ev_ok0"))
    rdb.xadd(Keys(prefix).events, {"kind": "bogus", "reply_id": rids[0], "event_id": "ev_bad1"})
    rdb.xadd(Keys(prefix).events, feedback_event("rep_missing", "thumbs", 1, "ev_bad2"))
    rdb.xadd(Keys(prefix).events, feedback_event(rids[1], "rating", 5, "ev_ok1"))
    rdb.xadd(Keys(prefix).events, feedback_event(rids[2], "thumbs", -1, "ev_ok2"))
    procs.start(env, "beat")
    procs.start(env, "worker")
    # the good events are not held up by the poison ones
    wait_for(lambda: all(rdb.hget(Keys(prefix).reward(r), "state") == "rewarded" for r in rids), 60,
             "the good events' rewards", procs)
    assert [rdb.hget(Keys(prefix).reward(r), "reward") for r in rids] == ["1.0", "1.0", "-1.0"]
    wait_for(lambda: rdb.xlen(Keys(prefix).dead_letters) == 2 and pending_count(rdb, prefix) == 0, 60,
             "both poison events in the dead letters", procs)
    letters = {f["kind"]: f for _, f in rdb.xrange(Keys(prefix).dead_letters)}
    assert "unknown kind 'bogus'" in letters["bogus"]["error"]
    assert "'rep_missing' does not exist" in letters["thumbs"]["error"]
    assert all(int(f["deliveries"]) >= 2 for f in letters.values())
    out = subprocess.run([sys.executable, "-m", "service.cli", "rewards", "dead-letters"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "bogus" in out.stdout and "rep_missing" in out.stdout


def test_two_beats_finalize_once_per_period(rdb, prefix, procs, worker_env):
    env = worker_env(REWARDLOOP_WORKER_EVENTS_EVERY_S=5, REWARDLOOP_WORKER_RECLAIM_EVERY_S=5,
                     REWARDLOOP_WORKER_ABANDON_EVERY_S=5, REWARDLOOP_BEAT_LOCK_TTL_S=2)
    procs.start(env, "worker")
    beats = [procs.start(env, "beat"), procs.start(env, "beat")]
    wait_for(lambda: stat(rdb, prefix, "runs:finalize_due") >= 2, 60, "finalization to run", procs)
    window = 8.0
    before, t0 = stat(rdb, prefix, "runs:finalize_due"), time.monotonic()
    time.sleep(window)
    runs = stat(rdb, prefix, "runs:finalize_due") - before
    elapsed = time.monotonic() - t0
    assert all(b.poll() is None for b in beats), procs.logs()
    # one run per 1 s period; two sending beats would give about twice as many (slack: a busy
    # machine may run a few late ticks inside the window)
    assert 3 <= runs <= elapsed + 3, (runs, elapsed)

    # the leader dies without releasing its lock: the other beat takes over once it lapses
    leader_token = rdb.get(Keys(prefix).lock("beat"))
    leader = next(b for b, (_, log) in zip(beats, procs.started[1:]) if leader_token in log.read_text())
    procs.kill9(leader)
    wait_for(lambda: rdb.get(Keys(prefix).lock("beat")) not in (None, leader_token), 20, "a new leader", procs)
    before = stat(rdb, prefix, "runs:finalize_due")
    wait_for(lambda: stat(rdb, prefix, "runs:finalize_due") >= before + 2, 20, "finalization under the new leader",
             procs)
