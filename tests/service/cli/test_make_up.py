"""`make up` smoke test: it starts, /readyz turns ready, the printed /ops URL opens the operator
page (a token created once under the data dir), Ctrl-C stops everything."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from tests.support.clients import http
from tests.support.processes import MODELS, REPO, ctrl_c_stops_everything, free_port, port_open

pytestmark = pytest.mark.integration


def operator_page_opens(page, url: str, token: str) -> None:
    """The printed URL in Chromium: the page loads its figures, and the token moves from the
    address bar into the tab's session storage."""
    page.goto(url)
    page.wait_for_function("window.opsCharts && window.opsCharts.reward", timeout=30_000)
    assert "token" not in page.url and page.evaluate("sessionStorage.getItem('rl_operator_token')") == token
    page.reload()                                          # no token in the URL now: the tab still has it
    page.wait_for_function("window.opsCharts && window.opsCharts.reward", timeout=30_000)
    assert page.locator("#signin").is_hidden() and page.errors == []


def test_make_up_starts_everything_and_ctrl_c_stops_it(tmp_path, models_dir, request):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDLOOP_")}
    env.update(REWARDLOOP_MODEL="tiny-random", REWARDLOOP_PORT=str(port), REWARDLOOP_DATA_DIR=str(tmp_path),
               REWARDLOOP_MODEL_CACHE=str(MODELS), REWARDLOOP_MAX_NEW_TOKENS="8", PYTHONUNBUFFERED="1")
    log = tmp_path / "up.log"
    with open(log, "w") as out:
        # its own process group, like a terminal: Ctrl-C reaches make and everything under it
        proc = subprocess.Popen(["make", "--no-print-directory", "up"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        url_line = None
        while time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"rewardloop is up: (\S+)\s+\(Redis (\S+);", log.read_text())
            if m:
                url_line = m
                break
            time.sleep(0.5)
        assert url_line, log.read_text()[-3000:]
        assert url_line.group(1) == f"http://127.0.0.1:{port}/"
        assert http("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200
        ops = re.search(r"operator page:\s+(\S+/ops\?token=(\S+))", log.read_text())
        token = (tmp_path / "operator_token").read_text().strip()
        assert ops and ops.group(2) == token and (tmp_path / "operator_token").stat().st_mode & 0o077 == 0
        assert http("GET", f"http://127.0.0.1:{port}/ops/api/state", token=token)[0] == 200
        try:
            page = request.getfixturevalue("page")   # without Chromium: the HTTP checks above only
        except pytest.skip.Exception:
            page = None
        if page is not None:
            operator_page_opens(page, ops.group(1), token)
        redis_port = int(url_line.group(2).rsplit(":", 1)[1].split("/")[0])
        assert port_open(redis_port)
        assert (tmp_path / "redis" / "appendonly.aof").exists() or (tmp_path / "redis" / "appendonlydir").exists()
        ctrl_c_stops_everything(proc, {"the server": port, "the embedded Redis": redis_port})
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
