"""`rewardloop worker | beat | rewards`: help, and a clear message without a Redis URL."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.cli import commands
from service.cli import worker as cli
from tests.helpers import REPO


def run(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDLOOP_")}
    return subprocess.run([sys.executable, "-m", "service.cli", *argv], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_worker_and_beat_need_a_redis_url(command):
    out = run(command)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == f"rewardloop {command}: {cli.NO_REDIS}"


def test_help_and_up_commands():
    out = run("rewards", "show", "--help")
    assert out.returncode == 0 and "REPLY_ID" in out.stdout
    assert run("worker", "--queues", "nope").returncode == 2
    assert commands.UP_COMMANDS == [["worker", "--concurrency", "1"], ["beat"]]
    assert set(cli.HANDLERS) == {"worker", "beat", "rewards"}
