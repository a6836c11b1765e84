"""The console script: --help everywhere, tokens, doctor, and a clear exit when Redis is away."""
from __future__ import annotations

import subprocess
import sys

import pytest

from service.cli.main import build_parser
from service.serving.auth import verify_token
from tests.support.processes import REPO, SECRET, base_env


def run(args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def subcommands(parser):
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            yield [name]
            if sub._subparsers is not None:
                for rest in subcommands(sub):
                    yield [name, *rest]


def test_every_subcommand_has_help():
    paths = list(subcommands(build_parser()))
    assert ["up"] in paths and ["serve"] in paths and ["token", "create"] in paths and ["doctor"] in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*path, "--help"])
        assert exit_info.value.code == 0, path


def test_token_create_prints_a_verifiable_token(tmp_path):
    env = base_env("redis://127.0.0.1:1/0", "x:", tmp_path)
    out = run(["token", "create", "zoe", "--opt-out"], env)
    assert out.returncode == 0, out.stderr
    user = verify_token(SECRET, out.stdout.strip())
    assert user.user_id == "zoe" and user.opt_out


def test_serve_exits_with_one_line_when_redis_is_unreachable(tmp_path):
    env = base_env("redis://127.0.0.1:1/0", "x:", tmp_path)
    out = run(["serve", "--port", "1"], env)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if "rewardloop serve" in line]
    assert len(lines) == 1 and "redis://127.0.0.1:1/0" in lines[0]


@pytest.mark.integration
def test_doctor_reports_what_it_found(tmp_path, redis_url, models_dir):
    out = run(["doctor"], base_env(redis_url, "x:", tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    for word in ("python", "torch", "model", "loads", "redis"):
        assert word in out.stdout
    assert "answers" in out.stdout and "tiny-random" in out.stdout
    bad = run(["doctor", "--no-load"], base_env("redis://127.0.0.1:1/0", "x:", tmp_path))
    assert bad.returncode == 1 and "BAD" in bad.stdout


def test_bad_settings_are_named(tmp_path):
    env = base_env("redis://127.0.0.1:1/0", "x:", tmp_path, REWARDLOOP_TOP_P="2")
    out = run(["token", "create", "x"], env)
    assert out.returncode != 0 and "REWARDLOOP_TOP_P" in out.stderr
