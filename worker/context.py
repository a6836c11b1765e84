"""What a task needs in one worker process: the deployment's settings (bound once by the
entry point) and a Redis-backed runtime built lazily after the fork.

Tasks and the beat scheduler import this module, never the Celery app: the app includes
its task modules by name, so neither imports the other.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from core.keys import Keys
from core.settings import Settings
from worker.rewards.config import RewardConfig, load_reward_config

_settings: Settings | None = None


def bind(settings: Settings) -> None:
    """Called once by the entry point (worker/celery_app.configure)."""
    global _settings, _runtime
    _settings = settings
    _runtime = None


def settings() -> Settings | None:
    return _settings


@dataclass
class Runtime:
    """Built once per worker process (after the fork)."""
    settings: Settings
    cfg: RewardConfig
    keys: Keys
    ledger: object  # RewardLedger (imported lazily: importing this module opens no connection)
    pid: int


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():  # a forked child needs its own connection
        if _settings is None:
            raise RuntimeError("worker.celery_app.configure(settings) was not called in this process")
        from core.redis_conn import connect
        from worker.rewards.ledger import RewardLedger
        keys = Keys(_settings.prefix)
        ledger = RewardLedger(connect(_settings.redis_url, health_check_interval=30), keys)
        ledger.ensure_group()
        _runtime = Runtime(_settings, load_reward_config(_settings.reward_config), keys, ledger, os.getpid())
    return _runtime
