"""Fixtures for the reward-worker tests: real `rewardloop worker` / `beat` processes."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.processes import FAST, Procs, base_env
from tests.support.records import add_replies, feedback_event, reply_event  # noqa: F401 (importable here for a while)
from tests.support.waiting import wait_for  # noqa: F401 (importable here for a while)


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
