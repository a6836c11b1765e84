"""Celery task `learner.tasks.maybe_train` (queue `learn`, concurrency 1), called by beat every
REWARDLOOP_UPDATE_EVERY seconds: run the learner when enough new final rewards exist.

The work is a plain function (`check_and_train`) so it runs without Celery too; the task is a
thin `shared_task` wrapper that the Celery app includes by name. One run at a
time is guaranteed by the learner lock (runner.LearnerLock), not by the queue: a second trigger
while a run holds the lock returns at once.
"""
from __future__ import annotations

import logging

from celery import shared_task

from core.archive import Archive
from core.keys import Keys
from core.redis_conn import connect
from core.settings import LearnerSettings
from learner import dataset, runner
from worker import context

log = logging.getLogger(__name__)


def check_and_train(settings: LearnerSettings, **run_kwargs) -> dict:
    """{'state': waiting|busy|published|rejected|skipped|lost_lock, ...}"""
    keys = Keys(settings.prefix)
    r = connect(settings.redis_url)
    try:
        new = dataset.count_new(r, keys, limit=settings.min_samples, archive=Archive(settings.archive_location))
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


def _settings() -> LearnerSettings:
    """The settings the worker entry point bound (a worker of `learn` binds LearnerWorkerSettings),
    else the environment's."""
    bound = context.settings()
    return bound if isinstance(bound, LearnerSettings) else LearnerSettings.from_env()


# queue `learn` comes from worker.queues.ROUTES; no autoretry: a failed run changes nothing
# and the next beat tick tries again
@shared_task(name="learner.tasks.maybe_train", acks_late=True)
def maybe_train() -> dict:
    return check_and_train(_settings(), by="beat")
