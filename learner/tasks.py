"""Celery task `learner.tasks.maybe_train` (queue `learn`, concurrency 1), called by beat every
REWARDLOOP_UPDATE_EVERY seconds: run the learner when enough new final rewards exist.

The work is a plain function (`check_and_train`) so it runs without Celery too; the task is a
thin wrapper registered on `worker.celery_app.app` when that module is present. One run at a
time is guaranteed by the learner lock (runner.LearnerLock), not by the queue: a second trigger
while a run holds the lock returns at once.
"""
from __future__ import annotations

import logging

import redis

from learner import dataset, runner
from service.keys import Keys
from service.settings import Settings

log = logging.getLogger(__name__)


def check_and_train(settings: Settings, **run_kwargs) -> dict:
    """{'state': waiting|busy|published|rejected|skipped|lost_lock, ...}"""
    keys = Keys(settings.prefix)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        new = dataset.count_new(r, keys, limit=settings.min_samples)
        if new < settings.min_samples:
            return {"state": "waiting", "new_rewards": new, "min_samples": settings.min_samples}
        if runner.held(r, keys):
            return {"state": "busy", "reason": "another learner run holds the lock"}
    finally:
        r.close()
    run_kwargs.setdefault("progress", False)
    result = runner.run_once(settings, **run_kwargs)
    log.info("learner run: %s %s %s", result.state, result.version, result.reason)
    return {"state": result.state, "version": result.version, "reason": result.reason}


def _settings() -> Settings:
    """The settings the worker entry point configured, else the environment's."""
    try:
        from worker import celery_app
    except ModuleNotFoundError:
        return Settings.from_env()
    return getattr(celery_app, "_settings", None) or Settings.from_env()


def _maybe_train_body() -> dict:
    return check_and_train(_settings(), by="beat")


def _register():
    try:
        from worker.celery_app import app
    except ModuleNotFoundError as exc:
        if exc.name not in ("worker.celery_app", "celery"):
            raise
        log.debug("worker.celery_app not available (%s): maybe_train is a plain function", exc)
        return None
    # queue `learn` comes from worker.queues.ROUTES; no autoretry: a failed run changes nothing
    # and the next beat tick tries again
    return app.task(name="learner.tasks.maybe_train", acks_late=True)(
        _maybe_train_body)


maybe_train = _register() or _maybe_train_body
