"""The Celery app of the reward workers (and the learner's `learn` queue).

`app` is created bare at import so task modules can decorate with it; `configure(settings)`
binds it to a deployment at an entry point (`rewardloop worker` / `beat`): broker and result
backend are REWARDLOOP_REDIS_URL, every Celery key carries the deployment prefix, and the
per-process runtime (ledger, reward config) is built lazily in each worker process.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass

from celery import Celery
from kombu import Queue

from service.keys import Keys
from service.settings import Settings
from worker.reward_config import RewardConfig, load_reward_config

from . import queues
from .beat_schedule import build_schedule

log = logging.getLogger(__name__)

# Longer than any task (a learner run included): a task not acked by then is redelivered.
VISIBILITY_TIMEOUT_S = 4 * 3600
OPTIONAL_TASK_MODULES = ("learner.tasks",)  # another part's tasks; absent or broken must not stop us

app = Celery("rewardloop")


def _task_modules(optional: bool) -> list[str]:
    mods = ["worker.tasks", "worker.drift_task"]
    for name in OPTIONAL_TASK_MODULES if optional else ():
        try:
            if importlib.util.find_spec(name) is None:
                log.info("%s not installed: its tasks are skipped", name)
                continue
            importlib.import_module(name)
            mods.append(name)
        except ImportError as exc:
            log.warning("%s cannot be imported (%s): its tasks are skipped", name, exc)
    return mods


def configure(settings: Settings, learner_tasks: bool = True) -> Celery:
    """Bind `app` to this deployment. Call once, at the entry point, before starting anything.
    learner_tasks=False skips importing learner.tasks (torch, seconds): beat only sends by name,
    and a worker that does not consume the `learn` queue never runs them."""
    global _settings
    if not settings.redis_url:
        raise ValueError("REWARDLOOP_REDIS_URL is not set")
    _settings = settings
    load_reward_config(settings.reward_config)  # fail at start, not in the first task
    celery_prefix = settings.prefix + "celery:"
    app.conf.update(
        broker_url=settings.redis_url,
        result_backend=settings.redis_url,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S, "global_keyprefix": celery_prefix},
        result_backend_transport_options={"global_keyprefix": celery_prefix},
        broker_connection_retry_on_startup=True,
        task_queues=[Queue(q) for q in queues.ALL],
        task_default_queue=queues.REWARDS,
        task_routes=queues.ROUTES,
        task_serializer="json", result_serializer="json", accept_content=["json"],
        result_expires=3600,
        worker_prefetch_multiplier=1,  # a long task must not sit on short ones it prefetched
        worker_hijack_root_logger=False,
        beat_schedule=build_schedule(settings),
        beat_max_loop_interval=1.0,  # the leader lock is renewed every tick
        include=_task_modules(learner_tasks),
    )
    importlib.import_module("worker.tasks")
    importlib.import_module("worker.drift_task")
    return app


_settings: Settings | None = None


@dataclass
class Runtime:
    """What a task needs, built once per worker process (after the fork)."""
    settings: Settings
    cfg: RewardConfig
    keys: Keys
    ledger: object  # RewardLedger (imported lazily: the app module stays Redis-free)
    pid: int


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():  # a forked child needs its own connection
        if _settings is None:
            raise RuntimeError("worker.celery_app.configure(settings) was not called in this process")
        from .ledger import RewardLedger, connect
        keys = Keys(_settings.prefix)
        ledger = RewardLedger(connect(_settings.redis_url), keys)
        ledger.ensure_group()
        _runtime = Runtime(_settings, load_reward_config(_settings.reward_config), keys, ledger, os.getpid())
    return _runtime
