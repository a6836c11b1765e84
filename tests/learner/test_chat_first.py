"""Chat first on a shared machine: a real server reports its load, and a real learner process on
the same host waits between optimizer steps while the server streams (measured in the run's
manifest), at a lower CPU priority and with fewer torch threads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import redis

from core.keys import Keys
from core.registry import Registry
from core.server_load import STALE_S, ServerLoad
from learner.chat_first import busy_servers, live_hosts
from tests.support.clients import Chat
from tests.support.learner import favoured, write_logged
from tests.support.processes import REPO, base_env


def beat(active: int, waiting: int, at: float) -> str:
    return ServerLoad(at, active, waiting).to_redis()


def test_busy_means_a_fresh_heartbeat_with_streams_or_a_queue_on_the_host():
    now = 1000.0
    fields = {"a:1:5": beat(2, 0, now - 1), "a:2:5": beat(0, 0, now), "b:1:5": beat(0, 3, now),
              "a:3:5": beat(5, 5, now - STALE_S - 1), "x": "not json"}
    assert busy_servers(fields, now, "a") == ["a:1:5"]                  # the stale one is a dead server
    assert set(busy_servers(fields, now, None)) == {"a:1:5", "b:1:5"}   # 'shared': any server
    assert busy_servers(fields, now, "c") == []
    assert live_hosts(fields, now) == {"a", "b"}


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.integration
def test_the_learner_yields_while_a_server_on_its_host_streams(server_factory, redis_url, tmp_path, logged):
    srv = server_factory(REWARDLOOP_MAX_NEW_TOKENS="120")
    keys = Keys(srv.prefix)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    loads = lambda: [json.loads(v) for v in r.hgetall(keys.servers).values()]  # one server under this prefix
    assert wait_for(lambda: [x for x in loads() if x["active"] == 0], 30, "an idle heartbeat")
    write_logged(r, keys, logged, lambda i: 1.0 if favoured(i) else -1.0)

    stop = threading.Event()
    streamed = []

    def chat() -> None:
        c = Chat(srv, srv.token("busy-user"))
        while not stop.is_set():
            streamed.append(len(c.ask("Tell me a long story about the sea.")["text"]))
        c.close()
    talker = threading.Thread(target=chat, daemon=True)
    talker.start()
    wait_for(lambda: [x for x in loads() if x["active"] > 0], 30, "the server to report a stream")

    # nice 2, not the default 10: on a machine that other work keeps busy a nice-10 learner crawls
    env = base_env(redis_url, srv.prefix, tmp_path / "learner", REWARDLOOP_LEARNER_YIELD_MAX_S="0.5",
                   REWARDLOOP_PUBLISH_MODE="stable", REWARDLOOP_LEARNER_NICE="2")
    env.pop("OMP_NUM_THREADS")   # torch's own thread count, which the learner halves
    try:
        out = subprocess.run([sys.executable, "-m", "service.cli", "train", "--once", "--set", "step.mode=fixed",
                              "--set", "step.min_steps=4", "--set", "minibatch_size=4", "--set", "min_samples=4",
                              "--set", "reward_model.enabled=false", "--set", "safety.enabled=false"],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    finally:
        stop.set()
        talker.join(60)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    manifest = Registry(r, keys, tmp_path / "learner").manifest(1)
    shared = manifest.chat_first
    assert shared["shared"] is True and "this host" in shared["why"], shared
    assert shared["steps"] == manifest.training["steps"] >= 4          # it looked before every step
    assert shared["steps_paused"] >= 1 and shared["waited_s"] > 0.1, shared     # it gave way, and says how long
    assert shared["nice"] >= 2 and shared["torch_threads"] == max(1, (os.cpu_count() or 2) // 2), shared
    assert streamed, "the server streamed while the learner ran"

    srv.stop()   # a server that stops takes its report with it
    assert wait_for(lambda: not loads(), 10, "the heartbeat to go")
    r.close()
