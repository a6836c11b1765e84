"""`rewardloop worker | beat | rewards`: help, and a clear message without a Redis URL."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.cli import worker as cli
from service.cli.common import NO_REDIS
from service.cli.main import build_parser
from tests.support.processes import REPO


def run(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDLOOP_")}
    return subprocess.run([sys.executable, "-m", "service.cli", *argv], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_worker_and_beat_need_a_redis_url(command):
    out = run(command)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == f"rewardloop {command}: {NO_REDIS}"


def test_help_and_up_commands():
    out = run("rewards", "show", "--help")
    assert out.returncode == 0 and "REPLY_ID" in out.stdout
    assert run("worker", "--queues", "nope").returncode == 2
    assert set(cli.HANDLERS) == {"worker", "beat", "rewards"}


def test_up_plans_servers_on_consecutive_ports_and_one_learner_and_beat():
    from core.settings import Settings
    from service.cli.up import plan
    parts = plan(Settings(port=9100, host="127.0.0.1"), servers=3, workers=2)
    assert [(p.name, p.url) for p in parts if p.url] == [("server 1", "http://127.0.0.1:9100"),
                                                        ("server 2", "http://127.0.0.1:9101"),
                                                        ("server 3", "http://127.0.0.1:9102")]
    assert [p.argv for p in parts if not p.url] == [["worker", "--queues", "rewards,ops", "--concurrency", "1"]] * 2 + [
        ["worker", "--queues", "learn", "--concurrency", "1"], ["beat"]]
    assert [p.argv for p in plan(Settings(), 1, 4, with_workers=False)] == [["serve", "--port", "8000"]]
    for p in parts:   # every part is a command the CLI knows
        build_parser().parse_args(p.argv)


@pytest.mark.parametrize("flag", ["--servers", "--workers"])
def test_up_counts_are_checked(flag):
    for bad in ("0", "x", "65"):
        out = run("up", flag, bad)
        assert out.returncode == 2 and f"argument {flag}: {flag} must be" in out.stderr
