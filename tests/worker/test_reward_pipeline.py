"""End to end: chat and feedback through the websocket -> real Celery workers -> the final
reward ledger, the rewards stream and preference pairs. Tiny model, real Redis, no mocks."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core.keys import Keys
from tests.support.clients import Chat
from tests.support.processes import REPO
from tests.support.waiting import wait_for
from worker.rewards.function import GUARD_COMPONENTS

pytestmark = pytest.mark.integration

WAIT_WINDOW_S = 10.0


def entry(rdb, prefix, rid) -> dict:
    return rdb.hgetall(Keys(prefix).reward(rid))


def user_components(e: dict) -> dict:
    return {k: round(v, 6) for k, v in json.loads(e["components"]).items() if k not in GUARD_COMPONENTS}


def test_feedback_becomes_explained_final_rewards(server_factory, rdb, prefix, procs, worker_env, reward_toml):
    env = worker_env(REWARDLOOP_REWARD_CONFIG=reward_toml(wait_window_s=WAIT_WINDOW_S),
                     REWARDLOOP_WORKER_ABANDON_IDLE_S=3)
    procs.start(env, "worker")
    procs.start(env, "beat")
    srv = server_factory(prefix=prefix)

    chat = Chat(srv, srv.token("erin"))
    a = chat.ask("hello there")["start"]["reply_id"]
    assert chat.feedback(a, "thumbs", 1)["type"] == "ack"
    assert chat.feedback(a, "thumbs", -1)["type"] == "ack"       # a change of mind: the last one counts
    assert chat.feedback(a, "copy")["type"] == "ack"
    b = chat.ask("tell me more")["start"]["reply_id"]             # continuation for a
    assert chat.feedback(b, "rating", 5)["type"] == "ack"
    c1 = chat.ask("give me two options", candidates=2)["start"]["reply_id"]  # continuation for b
    c2 = chat.collect()["start"]["reply_id"]
    assert chat.feedback(c1, "choose", c2)["type"] == "ack"
    e = chat.ask("and now?")["start"]["reply_id"]                 # continuation for c1
    assert chat.feedback(e, "regenerate")["type"] == "ack"
    e2 = chat.collect()["start"]
    assert e2["replaces"] == e
    e2 = e2["reply_id"]
    assert chat.feedback(e2, "thumbs", 1)["type"] == "ack"        # the regeneration was kept: a pair

    finn = Chat(srv, srv.token("finn"))                            # asks once, then walks away
    f = finn.ask("hi")["start"]["reply_id"]

    replies = [a, b, c1, c2, e, e2, f]
    wait_for(lambda: all(entry(rdb, prefix, r).get("state") == "rewarded" for r in replies), 60,
             "every reply's final reward", procs)
    expected = {
        a: {"thumbs": -1.0, "copy": 0.5, "continuation": 0.3},
        b: {"rating": 1.0, "continuation": 0.3},
        c1: {"choose": 1.0, "continuation": 0.3},
        c2: {"choose": -1.0},
        e: {"regenerate": -0.5, "sibling": -0.5},   # replaced, and its sibling e2 was preferred
        e2: {"thumbs": 1.0, "sibling": 0.5},
        f: {"abandon": -0.1},
    }
    stream = {fl["reply_id"]: fl for _, fl in rdb.xrange(Keys(prefix).rewards)}
    for rid, comps in expected.items():
        got = entry(rdb, prefix, rid)
        assert user_components(got) == comps, (rid, got)
        total = max(-1.0, min(1.0, sum(json.loads(got["components"]).values())))
        assert float(got["reward"]) == pytest.approx(total)
        assert float(stream[rid]["reward"]) == pytest.approx(total)
        assert stream[rid]["user_id"] == ("finn" if rid == f else "erin")
        assert stream[rid]["state"] == "rewarded" and stream[rid]["config_hash"] == got["config_hash"]
        assert set(stream[rid]) >= {"session_id", "adapter_version", "user_weight", "opt_out", "finalized_at"}
    assert len(rdb.xrange(Keys(prefix).rewards)) == len(replies)  # one final reward per reply
    # finn's session ended (abandoned): its reward was final before the wait window
    fe = entry(rdb, prefix, f)
    assert float(fe["finalized_at"]) - float(fe["ended_at"]) < WAIT_WINDOW_S
    pairs = {(p["chosen_id"], p["rejected_id"], p["source"]) for _, p in rdb.xrange(Keys(prefix).pairs)}
    assert pairs == {(c1, c2, "choose"), (e2, e, "sibling")}  # one pair per comparison, not two

    # feedback after finalization is recorded as late and changes nothing
    before = entry(rdb, prefix, a)["reward"]
    assert chat.feedback(a, "thumbs", 1)["type"] == "ack"
    wait_for(lambda: entry(rdb, prefix, a).get("late_signals") == "1", 20, "the late signal", procs)
    assert entry(rdb, prefix, a)["reward"] == before
    assert len(rdb.xrange(Keys(prefix).rewards)) == len(replies)

    out = subprocess.run([sys.executable, "-m", "service.cli", "rewards", "show", a], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for needle in ("state rewarded", "thumbs        -1.000", "copy          +0.500", "continuation  +0.300",
                   "late     1 signal(s)"):
        assert needle in out.stdout, out.stdout
    chat.close()
    finn.close()


def test_a_user_voting_like_a_bot_is_weighted_down_visibly(rdb, prefix, procs, worker_env, reward_toml):
    from tests.support.records import add_replies, feedback_event, reply_event
    env = worker_env(REWARDLOOP_REWARD_CONFIG=reward_toml(wait_window_s=0.5))
    bot = add_replies(rdb, prefix, 6, user="bot", session="s_bot")
    human = add_replies(rdb, prefix, 1, user="human", session="s_human")
    with rdb.pipeline(transaction=False) as p:
        for i, rid in enumerate(bot):  # six thumbs up, each 0.2 s after the reply ended: nobody reads that fast
            p.xadd(Keys(prefix).events, reply_event(rid, "bot", "s_bot"))
            p.xadd(Keys(prefix).events, feedback_event(rid, "thumbs", 1, f"ev_b{i}", user="bot", session="s_bot", since_ms=200))
        p.xadd(Keys(prefix).events, reply_event(human[0], "human", "s_human"))
        p.xadd(Keys(prefix).events, feedback_event(human[0], "thumbs", 1, "ev_h", user="human", session="s_human", since_ms=9000))
        p.execute()
    procs.start(env, "worker")
    procs.start(env, "beat")
    wait_for(lambda: all(entry(rdb, prefix, r).get("state") == "rewarded" for r in bot + human), 60,
             "the rewards", procs)
    user = rdb.hgetall(Keys(prefix).user("bot"))
    assert float(user["anomaly_weight"]) == 0.25 and "all positive" in user["anomaly_reason"]
    last = entry(rdb, prefix, bot[-1])
    assert float(last["reward"]) == 0.25 and float(last["user_weight"]) == 0.25
    assert last["anomaly_reason"] == user["anomaly_reason"]
    assert any("user weight 0.25" in line for line in json.loads(last["explain"]))
    assert float(entry(rdb, prefix, human[0])["reward"]) == 1.0
    stream = {f["reply_id"]: f for _, f in rdb.xrange(Keys(prefix).rewards)}
    assert stream[bot[-1]]["user_weight"] == "0.25" and stream[human[0]]["user_weight"] == "1.0"
