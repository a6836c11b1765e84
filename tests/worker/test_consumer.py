"""The batched reward pipeline against a real Redis: one ledger call per batch gives the same
ledger as the event-by-event path, isolates bad entries, finalizes each reply once however
many workers finalize at the same time; the consumer thread and the worker processes that run it."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time

import pytest

from core.keys import Keys
from core.redis_conn import connect
from tests.support.processes import REPO
from tests.support.records import add_replies, feedback_event, reply_event
from tests.support.waiting import wait_for
from worker.rewards import processor
from worker.rewards.config import RewardConfig
from worker.rewards.consumer import ConsumerThread, EventConsumer
from worker.rewards.ledger import RewardLedger

pytestmark = pytest.mark.integration


def ledger_for(redis_url: str, prefix: str) -> RewardLedger:
    ledger = RewardLedger(connect(redis_url), Keys(prefix))
    ledger.ensure_group()
    return ledger


def mixed_events(rdb, prefix: str) -> list[dict]:
    """Every kind of event, with duplicates, a choose pair, a bot-like voter and an abandon."""
    a = add_replies(rdb, prefix, 4, user="ann", session="s_ann")
    b = add_replies(rdb, prefix, 6, user="bot", session="s_bot")
    evs = [reply_event(r, "ann", "s_ann") for r in a] + [reply_event(r, "bot", "s_bot") for r in b]
    evs += [feedback_event(a[0], "thumbs", 1, "e1", user="ann", session="s_ann"),
            feedback_event(a[0], "thumbs", -1, "e2", user="ann", session="s_ann"),
            feedback_event(a[0], "thumbs", -1, "e2", user="ann", session="s_ann"),           # a retry: counts once
            feedback_event(a[1], "rating", 5, "e3", user="ann", session="s_ann"),
            feedback_event(a[2], "choose", a[3], "e4", user="ann", session="s_ann"),
            feedback_event(a[1], "copy", None, "e5", user="ann", session="s_ann"),
            {"kind": "user_message", "session_id": "s_ann", "user_id": "ann", "server_time": repr(time.time())}]
    evs += [feedback_event(r, "thumbs", 1, f"eb{i}", user="bot", session="s_bot", since_ms=100) for i, r in enumerate(b)]
    evs += [{**feedback_event(b[-1], "abandon", 5.0, "e_ab", user="bot", session="s_bot"), "value": "5.0"}]
    return evs


def snapshot(rdb, prefix: str) -> dict:
    """Everything the ledger wrote, minus times and stream ids."""
    out = {}
    for key in sorted(rdb.scan_iter(prefix + "*")):
        name = key[len(prefix):]
        kind = rdb.type(key)
        if name.startswith(("events", "worker:errors")):
            continue
        if kind == "hash":
            value = {k: v for k, v in rdb.hgetall(key).items() if not k.endswith("_at")}
            if name.startswith("reward_signals:"):
                value = sorted(value)
        elif kind == "list":
            value = rdb.lrange(key, 0, -1)
        elif kind == "zset":
            value = sorted(rdb.zrange(key, 0, -1))
        else:
            value = sorted(tuple(sorted(f.items())) for _, f in rdb.xrange(key))
        out[name] = value
    return out


def test_one_call_per_batch_writes_what_event_by_event_writes(rdb, redis_url):
    cfg = RewardConfig()
    results = []
    for batched in (True, False):
        prefix = f"tc{int(batched)}{time.monotonic_ns()}:"
        ledger = ledger_for(redis_url, prefix)
        entries = [(rdb.xadd(Keys(prefix).events, ev), ev) for ev in mixed_events(rdb, prefix)]
        res = processor.BatchResult()
        (processor.process_entries if batched else processor.process_one_by_one)(ledger, cfg, entries, res)
        assert (res.acked, res.failed) == (len(entries), 0)
        results.append(snapshot(rdb, prefix))
    batched, one_by_one = results
    assert batched == one_by_one
    assert len(batched["pairs"]) == 1
    assert batched["user:bot"]["anomaly_weight"] == "0.25"      # six fast votes of one sign
    assert batched["worker:stats"]["signals"] == str(2 + 1 + 2 + 1 + 6 + 1)
    assert sorted(batched["reward_signals:rep_s_ann_0"]) == ["e1", "e2"]


def test_bad_entries_in_a_batch_stay_pending_and_block_nothing(rdb, redis_url, prefix):
    ledger = ledger_for(redis_url, prefix)
    rids = add_replies(rdb, prefix, 2)
    for ev in [reply_event(rids[0]), {"kind": "bogus", "reply_id": rids[0], "event_id": "x1"},
               feedback_event("rep_missing", "thumbs", 1, "x2"), feedback_event(rids[0], "thumbs", 1, "ok1"),
               feedback_event(rids[1], "choose", "rep_gone", "x3"), feedback_event(rids[1], "rating", 4, "ok2")]:
        rdb.xadd(Keys(prefix).events, ev)
    res = processor.BatchResult()
    processor.process_entries(ledger, RewardConfig(), ledger.read_new("c1", 100), res)
    assert (res.acked, res.failed) == (3, 3)
    errors = rdb.hgetall(Keys(prefix).worker_errors)
    assert len(errors) == 3
    assert sum("unknown kind 'bogus'" in v for v in errors.values()) == 1
    assert sum("'rep_missing' does not exist" in v for v in errors.values()) == 1
    assert sum("'rep_gone' does not exist" in v for v in errors.values()) == 1
    assert rdb.xpending(Keys(prefix).events, "rewarders")["pending"] == 3
    assert rdb.hkeys(Keys(prefix).reward_signals(rids[0])) == ["ok1"]
    assert sorted(rdb.hkeys(Keys(prefix).reward_signals(rids[1]))) == ["ok2", "x3"]  # the chosen side came first


def test_a_batch_the_script_refuses_is_redone_entry_by_entry(rdb, redis_url, prefix):
    ledger = ledger_for(redis_url, prefix)
    rids = add_replies(rdb, prefix, 2, user="u1") + add_replies(rdb, prefix, 1, user="u2", session="s2")
    rdb.set(Keys(prefix).reward_signals(rids[2]), "not a hash")  # WRONGTYPE inside the batch script
    for ev in [reply_event(rids[0]), feedback_event(rids[0], "thumbs", 1, "a"), feedback_event(rids[1], "thumbs", -1, "b"),
               feedback_event(rids[2], "thumbs", 1, "c", user="u2", session="s2")]:
        rdb.xadd(Keys(prefix).events, ev)
    res = processor.BatchResult()
    processor.process_entries(ledger, RewardConfig(), ledger.read_new("c1", 100), res)
    assert (res.acked, res.failed) == (3, 1)
    assert "WRONGTYPE" in res.errors[0]
    assert rdb.hkeys(Keys(prefix).reward_signals(rids[1])) == ["b"]


def test_concurrent_finalizers_finalize_each_reply_once(rdb, redis_url, prefix):
    cfg = dataclasses.replace(RewardConfig(), wait_window_s=0.001)
    ledger = ledger_for(redis_url, prefix)
    rids = add_replies(rdb, prefix, 1200)
    with rdb.pipeline(transaction=False) as p:
        for i, rid in enumerate(rids):
            p.xadd(Keys(prefix).events, reply_event(rid))
            p.xadd(Keys(prefix).events, feedback_event(rid, "thumbs", 1 if i % 2 else -1, f"e{i}"))
        p.execute()
    while entries := ledger.read_new("c1", 500):
        processor.process_entries(ledger, cfg, entries, processor.BatchResult())
    counts = []

    def finalize_all():
        mine = ledger_for(redis_url, prefix)  # its own connection, like another worker
        n = 0
        while got := processor.finalize_due(mine, cfg, time.time(), limit=100):
            n += got
        counts.append(n)
    threads = [threading.Thread(target=finalize_all) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(counts) == len(rids)
    assert len(counts) == 3 and all(counts), counts  # they shared the work
    finals = [f["reply_id"] for _, f in rdb.xrange(Keys(prefix).rewards)]
    assert sorted(finals) == sorted(rids)
    assert rdb.zcard(Keys(prefix).rewards_pending) == 0
    assert int(rdb.hget(Keys(prefix).worker_stats, "finalized:rewarded")) == len(rids)


def test_a_claimed_reply_is_due_again_when_its_worker_died(rdb, redis_url, prefix):
    ledger = ledger_for(redis_url, prefix)
    rid = add_replies(rdb, prefix, 1, ended_at=time.time() - 10)[0]
    ledger.ensure_entry(rid, 1.0, time.time())
    now = time.time()
    assert ledger.claim_due(now, 10, lease_s=30) == [rid]       # a worker takes it, then dies
    assert processor.finalize_due(ledger, RewardConfig(), now) == 0
    assert processor.finalize_due(ledger, RewardConfig(), now + 31) == 1   # the lease ran out
    assert rdb.hget(Keys(prefix).reward(rid), "state") == "excluded"  # no signal, the default policy


def test_consumer_thread_gives_final_rewards_as_feedback_arrives(rdb, redis_url, prefix):
    cfg = dataclasses.replace(RewardConfig(), wait_window_s=0.001)
    ledger = ledger_for(redis_url, prefix)
    worker = ConsumerThread(EventConsumer(ledger, cfg, "c-thread", block_ms=200)).start()
    try:
        rids = add_replies(rdb, prefix, 20)
        for i, rid in enumerate(rids):
            with rdb.pipeline(transaction=True) as p:  # together: with no wait window, a reply read alone is final
                p.xadd(Keys(prefix).events, reply_event(rid))
                p.xadd(Keys(prefix).events, feedback_event(rid, "thumbs", 1, f"e{i}"))
                p.execute()
        wait_for(lambda: rdb.xlen(Keys(prefix).rewards) == len(rids), 20, "every final reward")
        assert {f["reward"] for _, f in rdb.xrange(Keys(prefix).rewards)} == {"1.0"}
        assert rdb.xpending(Keys(prefix).events, "rewarders")["pending"] == 0
    finally:
        worker.stop()
    assert not worker.alive()
    assert worker.consumer.totals.acked == 2 * len(rids)


def test_the_consumer_redoes_its_own_unacked_entries_after_a_failure(rdb, redis_url, prefix):
    ledger = ledger_for(redis_url, prefix)
    rids = add_replies(rdb, prefix, 3)
    for rid in rids:
        rdb.xadd(Keys(prefix).events, reply_event(rid))
    ledger.read_new("c-own", 10)  # delivered, then the batch "met a Redis error": nothing acked
    consumer = EventConsumer(ledger, RewardConfig(), "c-own", block_ms=50)
    consumer.step()   # the pass over its own pending entries
    assert consumer.own_pending is not None and consumer.totals.acked == 3
    consumer.step()   # that pass is over: back to new events
    assert consumer.own_pending is None
    assert rdb.xpending(Keys(prefix).events, "rewarders")["pending"] == 0
    assert all(rdb.hget(Keys(prefix).reward(r), "state") == "pending" for r in rids)


def test_each_pool_process_of_a_rewards_worker_runs_a_consumer(rdb, prefix, procs, worker_env):
    env = worker_env()
    procs.start(env, "worker", "--queues", "rewards,ops", "--concurrency", "2")
    learn = procs.start(env, "worker", "--queues", "learn")
    rid = add_replies(rdb, prefix, 1)[0]
    rdb.xadd(Keys(prefix).events, reply_event(rid))
    wait_for(lambda: rdb.exists(Keys(prefix).reward(rid)), 60, "the event to be processed", procs)
    wait_for(lambda: len(rdb.xinfo_consumers(Keys(prefix).events, "rewarders")) == 2, 60, "two consumers", procs)
    learn_log = next(log for p, log in procs.started if p is learn)
    wait_for(lambda: " ready." in learn_log.read_text(errors="replace"), 120, "the learn worker", procs)
    time.sleep(1)  # a consumer starts with its pool process, before the worker says ready
    names = [c["name"] for c in rdb.xinfo_consumers(Keys(prefix).events, "rewarders")]
    assert len(names) == 2 and len(set(names)) == 2, names  # none of the learn worker
    # the reward workers' container health check: a consumer of this host read within 30 s
    check = [sys.executable, "-m", "service.cli", "rewards", "consumers", "--check"]
    out = subprocess.run(check, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("2 of 2 consumer(s)"), out.stdout + out.stderr
    out = subprocess.run(check, env={**env, "REWARDLOOP_PREFIX": prefix + "none:"}, cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and out.stdout.startswith("0 of 0"), out.stdout + out.stderr
