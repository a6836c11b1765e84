"""`rewardloop up --servers 2 --workers 2` on one Redis with the tiny model: chats on both
servers, feedback from both rewarded exactly once, a published adapter served by both, a
server killed mid-stream leaves the other's streams alone (and `up` restarts it), beat runs
each periodic task once per period, the learner worker takes the `learn` queue. No mocks."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from websockets.exceptions import ConnectionClosed

from core.keys import Keys
from tests.support.clients import Chat, http
from tests.support.models import publish_adapter, train_parrot_adapter
from tests.support.processes import FAST, REPO, Endpoint, base_env
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

TINY_ID = "rewardloop/tiny-random-llama"
LONG = 300  # tokens per reply: long enough to kill a server while it streams


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def two_free_ports() -> int:
    """Two consecutive free ports below the ephemeral range (where the workers' own outgoing
    connections would take the second one)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 30000)
        if port_free(port) and port_free(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports")


def ready(url: str) -> bool:
    try:
        return http("GET", url + "/readyz", timeout=2)[0] == 200
    except (OSError, ValueError):  # not listening yet
        return False


def token(user: str) -> str:
    from service.serving.auth import create_token
    from tests.support.processes import SECRET
    return create_token(SECRET, user, 3600)


def start_reply(chat: Chat, text: str) -> str:
    """Send a message and read until the reply's first token: it is streaming now."""
    chat.send({"type": "user_message", "text": text, "client_msg_id": f"m{time.monotonic_ns()}"})
    rid = chat.recv_type("reply_start")["reply_id"]
    chat.recv_type("token")
    return rid


def finish_reply(chat: Chat) -> dict:
    while True:
        f = chat.recv()
        if f["type"] == "reply_end":
            return f
        assert f["type"] == "token", f


def runs(rdb, prefix: str) -> dict[str, int]:
    return {k.split(":", 1)[1]: int(v) for k, v in rdb.hgetall(Keys(prefix).worker_stats).items() if k.startswith("runs:")}


def test_two_servers_two_reward_workers_a_learner_and_beat_on_one_redis(models_dir, redis_url, rdb, prefix, tmp_path):
    port = two_free_ports()
    data = tmp_path / "data"
    data.mkdir()
    toml = tmp_path / "reward.toml"
    toml.write_text("wait_window_s = 4.0\n")  # feedback comes right after each reply
    env = base_env(redis_url, prefix, data, **{**FAST, "REWARDLOOP_PORT": port, "REWARDLOOP_MAX_NEW_TOKENS": LONG,
                                               "REWARDLOOP_REWARD_CONFIG": toml, "REWARDLOOP_OPS_EVERY_S": 1,
                                               "REWARDLOOP_UPDATE_EVERY": 1, "REWARDLOOP_WORKER_ABANDON_IDLE_S": 3600})
    log = tmp_path / "up.log"
    up = subprocess.Popen([sys.executable, "-m", "service.cli", "up", "--servers", "2", "--workers", "2"], env=env,
                          cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    text = lambda: log.read_text(errors="replace")

    try:
        wait_for(lambda: "rewardloop is up" in text() and "beat" in text().split("rewardloop is up")[1], 240,
                 "`up` to print its URLs", log)
        pids = {m[0]: int(m[1]) for m in re.findall(r"^\s+(server \d|reward worker \d|learner worker|beat)\s.*pid (\d+)",
                                                    text(), re.M)}
        assert set(pids) == {"server 1", "server 2", "reward worker 1", "reward worker 2", "learner worker", "beat"}
        assert f"http://127.0.0.1:{port}/" in text() and f"http://127.0.0.1:{port + 1}/" in text()
        a, b = Endpoint(port), Endpoint(port + 1)

        # chats on both servers, feedback from both: each reply rewarded exactly once
        ca, cb = Chat(a, token("ann")), Chat(b, token("bob"))
        ra = ca.ask("hello")["start"]["reply_id"]
        assert ca.feedback(ra, "thumbs", 1)["type"] == "ack"
        rb = cb.ask("hi there")["start"]["reply_id"]
        assert cb.feedback(rb, "thumbs", -1)["type"] == "ack"
        rb2 = cb.ask("and more")["start"]["reply_id"]
        assert cb.feedback(rb2, "rating", 5)["type"] == "ack"
        assert cb.feedback(rb2, "rating", 5, feedback_id="same")["type"] == "ack"
        assert cb.feedback(rb2, "rating", 5, feedback_id="same")["type"] == "ack"   # a retry counts once
        wait_for(lambda: all(rdb.hget(Keys(prefix).reward(r), "state") == "rewarded" for r in (ra, rb, rb2)), 60,
                 "the rewards of both servers' replies", log)
        finals = [f["reply_id"] for _, f in rdb.xrange(Keys(prefix).rewards)]
        assert sorted(r for r in finals if r in (ra, rb, rb2)) == sorted([ra, rb, rb2])   # once each
        components = [json.loads(rdb.hget(Keys(prefix).reward(r), "components")) for r in (ra, rb, rb2)]
        assert [c.get("thumbs") or c.get("rating") for c in components] == [1.0, -1.0, 1.0]   # (+ length guards)
        assert len(rdb.hkeys(Keys(prefix).reward_signals(rb2))) == 2
        consumers = rdb.xinfo_consumers(Keys(prefix).events, "rewarders")
        assert len(consumers) == 2, consumers   # one per reward worker, none of the learner worker

        # a published adapter is served by both
        version = publish_adapter(redis_url, prefix, data, train_parrot_adapter(models_dir, " yes", steps=3), TINY_ID)
        published = time.time()

        def loaded_on() -> dict:
            return {f["server"]: float(f["at"]) for _, f in rdb.xrange(Keys(prefix).adapter_swaps)
                    if f["version"] == version and f["result"] == "loaded"}
        wait_for(lambda: len(loaded_on()) == 2, 60, "both servers to load the adapter", log)
        print(f"\npublish -> loaded on both servers: {max(loaded_on().values()) - published:.3f} s")
        assert ca.ask("hello")["start"]["adapter_version"] == version
        assert cb.ask("hello")["start"]["adapter_version"] == version

        # server 1 dies mid-stream: server 2's stream goes on to its last token
        start_reply(cb, "tell me a long story")
        start_reply(ca, "tell me another")
        os.kill(pids["server 1"], signal.SIGKILL)
        end = finish_reply(cb)
        assert end["n_tokens"] == LONG and end["finish_reason"] == "length", end
        with pytest.raises(ConnectionClosed):  # its server is gone
            finish_reply(ca)
        assert cb.ask("still there?")["end"]["n_tokens"] == LONG
        wait_for(lambda: "server 1 exited with code -9; restarting it" in text(), 30, "`up` to notice", log)
        wait_for(lambda: ready(a.url), 120, "server 1 to be back", log)
        ca = Chat(a, token("ann"))
        assert ca.ask("back?")["start"]["adapter_version"] == version  # the restarted one loads the adapter too

        # beat: each periodic task once per period, with two reward workers to take it
        window, before = 6.0, runs(rdb, prefix)
        time.sleep(window)
        after = runs(rdb, prefix)
        periods = {"process_events": 0.5, "finalize_due": 1, "reclaim_stale": 1, "derive_abandonment": 1, "ops_tick": 1}
        for task, period in periods.items():
            n = after.get(task, 0) - before.get(task, 0)
            assert window / period - 3 <= n <= window / period + 3, (task, n, before, after)
        # the learner worker takes `learn`: beat's maybe_train ran there (too few samples: waiting)
        metas = [json.loads(rdb.get(k)) for k in rdb.scan_iter(Keys(prefix).celery + "celery-task-meta-*")]
        assert any(isinstance(m.get("result"), dict) and m["result"].get("state") == "waiting" for m in metas), metas[:3]
        assert rdb.llen(Keys(prefix).celery_queue("learn")) == 0
        ca.close()
        cb.close()

        os.killpg(up.pid, signal.SIGINT)   # Ctrl-C
        assert up.wait(60) == 0, text()[-3000:]
        time.sleep(0.5)
        assert port_free(port) and port_free(port + 1)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
