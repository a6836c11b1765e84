"""Fixtures for the reward-worker tests: real `rewardloop worker` / `beat` processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, base_env

FAST = {  # short periods so a test sees a full cycle in seconds
    "REWARDLOOP_WORKER_EVENTS_EVERY_S": "0.5", "REWARDLOOP_WORKER_FINALIZE_EVERY_S": "1",
    "REWARDLOOP_WORKER_RECLAIM_EVERY_S": "1", "REWARDLOOP_WORKER_RECLAIM_IDLE_S": "2",
    "REWARDLOOP_WORKER_ABANDON_EVERY_S": "1", "REWARDLOOP_BEAT_LOCK_TTL_S": "3",
}


class Procs:
    """Start `python -m service.cli ...` processes in their own process groups (so kill -9
    takes a prefork worker's children too); all are killed at teardown."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, env: dict, *argv: str) -> subprocess.Popen:
        log = self.tmp / f"{argv[0]}{len(self.started)}.log"
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", *argv], env=env, cwd=REPO,
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((proc, log))
        return proc

    def kill9(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for _, log in self.started)

    def stop_all(self) -> None:
        for proc, _ in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in self.started:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.stop_all()


@pytest.fixture
def reward_toml(tmp_path):
    def write(**values) -> Path:
        path = tmp_path / "reward.toml"
        path.write_text("".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in values.items()))
        return path
    return write


@pytest.fixture
def worker_env(redis_url, prefix, tmp_path):
    """Environment of worker/beat processes for this test's prefix; keyword overrides win."""
    def make(**extra) -> dict:
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        return base_env(redis_url, prefix, data, **{**FAST, **extra})
    return make


def wait_for(predicate, timeout: float, what: str, procs: Procs | None = None, every: float = 0.1):
    """Poll until predicate() is truthy; fail with `what` (and the process logs) after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{procs.logs() if procs else ''}")


def add_replies(rdb, prefix: str, n: int, user: str = "u1", session: str = "s1", ended_at: float | None = None,
                text: str = "Paris is the capital of France.") -> list[str]:
    """Write n reply hashes and their `reply` events the way the server does (service/store.py)."""
    ended_at = ended_at or time.time()
    ids = [f"rep_{session}_{i}" for i in range(n)]
    with rdb.pipeline(transaction=False) as p:
        for rid in ids:
            p.hset(f"{prefix}reply:{rid}", mapping={
                "reply_id": rid, "user_id": user, "session_id": session, "adapter_version": "base", "text": text,
                "n_tokens": 7, "finish_reason": "stop", "ended_at": repr(ended_at), "opt_out": 0})
            p.rpush(f"{prefix}session_replies:{session}", rid)
        p.execute()
    return ids


def reply_event(rid: str, user: str = "u1", session: str = "s1") -> dict:
    return {"kind": "reply", "reply_id": rid, "session_id": session, "user_id": user, "adapter_version": "base",
            "server_time": repr(time.time())}


def feedback_event(rid: str, kind: str, value, event_id: str, user: str = "u1", session: str = "s1",
                   since_ms: int = 5000) -> dict:
    return {"event_id": event_id, "kind": kind, "value": str(value), "feedback_id": "f" + event_id, "reply_id": rid,
            "session_id": session, "user_id": user, "adapter_version": "base", "server_time": repr(time.time()),
            "since_reply_end_ms": str(since_ms)}


@pytest.fixture
def webhook():
    """A real HTTP endpoint that records the JSON alerts POSTed to it: (url, received list)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/alerts", got
    srv.shutdown()
    srv.server_close()
