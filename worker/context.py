"""What a task needs in one worker process: the deployment's settings (bound once by the
entry point) and a Redis-backed runtime built lazily after the fork.

Tasks and the beat scheduler import this module, never the Celery app: the app includes
its task modules by name, so neither imports the other.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from core.keys import Keys
from core.settings import WorkerSettings
from worker.rewards.config import RewardConfig, load_reward_config

log = logging.getLogger(__name__)

_settings: WorkerSettings | None = None
_consume_events = False


def bind(settings: WorkerSettings, consume_events: bool = False) -> None:
    """Called once by the entry point (worker/celery_app.configure). consume_events: this is a
    worker of the `rewards` queue, whose every process runs an event consumer."""
    global _settings, _runtime, _consume_events
    _settings = settings
    _runtime = None
    _consume_events = consume_events


def settings() -> WorkerSettings | None:
    return _settings


@dataclass
class Runtime:
    """Built once per worker process (after the fork)."""
    settings: WorkerSettings
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


# --- the event consumer of this process (worker/rewards/consumer.py) ------------------------
_consumer = None  # ConsumerThread
_consumer_pid = 0


def start_consumer() -> bool:
    """Make sure this process's event consumer runs (start it, or replace one that died).
    True if one runs now; False where this worker does not consume events or Redis is down."""
    global _consumer, _consumer_pid
    if not _consume_events:
        return False
    if _consumer is not None and _consumer_pid == os.getpid() and _consumer.alive():
        return True
    from worker.rewards.consumer import ConsumerThread, EventConsumer
    from worker.rewards.processor import consumer_name
    try:
        rt = runtime()
    except Exception as exc:  # Redis down at start: the next beat tick (process_events) retries
        log.warning("event consumer not started (%s: %s); retrying on the next tick", type(exc).__name__, exc)
        return False
    _consumer = ConsumerThread(EventConsumer(rt.ledger, rt.cfg, consumer_name())).start()
    _consumer_pid = os.getpid()
    return True


def stop_consumer() -> None:
    if _consumer is not None and _consumer_pid == os.getpid():
        _consumer.stop()
