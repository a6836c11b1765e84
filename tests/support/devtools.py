"""Helpers for the developer-tools tests: run the real reward pipeline in-process (the same
functions the Celery tasks call) and the CLI in-process with a deployment's environment."""
from __future__ import annotations

import json
import time

from core.keys import Keys
from tests.support.processes import MODELS


def finalize_rewards(redis_url: str, prefix: str, cfg=None) -> None:
    """Process every event, then finalize every pending reward as if the wait window had passed."""
    from core.redis_conn import connect
    from worker.rewards.config import RewardConfig
    from worker.rewards.ledger import RewardLedger
    from worker.rewards.processor import finalize_due, process_events
    cfg = cfg or RewardConfig()
    ledger = RewardLedger(connect(redis_url), Keys(prefix))
    ledger.ensure_group()
    process_events(ledger, cfg, "test-consumer", budget_s=10)
    finalize_due(ledger, cfg, time.time() + cfg.wait_window_s + 3600)


def cli(monkeypatch, capsys, server, *argv: str) -> tuple[int, str, str]:
    """Run `rewardloop ARGV` in this process against `server`'s Redis, prefix and data dir."""
    from service.cli import main as service_cli
    for k, v in server.env.items():
        if k.startswith("REWARDLOOP_"):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("REWARDLOOP_MODEL_CACHE", str(MODELS))
    capsys.readouterr()
    try:
        code = service_cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_json(monkeypatch, capsys, server, *argv: str):
    code, out, err = cli(monkeypatch, capsys, server, *argv)
    assert code == 0, err
    return json.loads(out)
