"""Celery tasks of the reward workers: thin wrappers over worker/processor.py. Every task is
idempotent (see processor.py), so acks_late is safe: a worker killed mid-task gets its task
redelivered. Only transient Redis errors are retried by Celery."""
from __future__ import annotations

import logging
import time

import redis

from . import processor
from .celery_app import app, runtime

log = logging.getLogger(__name__)

TRANSIENT = (redis.ConnectionError, redis.TimeoutError)
COMMON = dict(acks_late=True, ignore_result=True, autoretry_for=TRANSIENT, retry_backoff=True, max_retries=3)


@app.task(name="worker.tasks.process_events", **COMMON)
def process_events() -> dict:
    rt = runtime()
    res = processor.process_events(rt.ledger, rt.cfg, processor.consumer_name())
    if res.acked or res.failed:
        log.info("processed %d event(s), %d failed, %d reward(s) final", res.acked, res.failed, res.finalized)
    return {"acked": res.acked, "failed": res.failed, "finalized": res.finalized}


@app.task(name="worker.tasks.finalize_due", **COMMON)
def finalize_due() -> int:
    rt = runtime()
    rt.ledger.count("runs:finalize_due")  # one count per run: shows whether two beats doubled it
    n = processor.finalize_due(rt.ledger, rt.cfg, time.time())
    if n:
        log.info("finalized %d reward(s)", n)
    return n


@app.task(name="worker.tasks.derive_abandonment", **COMMON)
def derive_abandonment() -> int:
    rt = runtime()
    return processor.derive_abandonment(rt.ledger, rt.settings.worker_abandon_idle_s, time.time())


@app.task(name="worker.tasks.reclaim_stale", **COMMON)
def reclaim_stale() -> dict:
    rt = runtime()
    res = processor.reclaim_stale(rt.ledger, rt.cfg, processor.consumer_name(), rt.settings.worker_reclaim_idle_s,
                                  rt.settings.worker_max_deliveries)
    return {"acked": res.acked, "failed": res.failed, "finalized": res.finalized}
