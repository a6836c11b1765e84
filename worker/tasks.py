"""Celery tasks of the reward workers and the operator monitor: thin wrappers over
worker/rewards/processor.py and worker/ops/monitor.py. Every task is idempotent (see those
modules), so acks_late is safe: a worker killed mid-task gets its task redelivered. Only
transient Redis errors are retried by Celery.

`shared_task`: the tasks bind to whichever app includes this module (worker/celery_app.py
names it), so this module never imports the app.
"""
from __future__ import annotations

import logging
import time

import redis
from celery import shared_task

from core.registry import Registry
from worker.archive.run import run_archive
from worker.context import runtime, start_consumer
from worker.ops import monitor
from worker.rewards import processor

log = logging.getLogger(__name__)

TRANSIENT = (redis.ConnectionError, redis.TimeoutError)
COMMON = dict(acks_late=True, ignore_result=True, autoretry_for=TRANSIENT, retry_backoff=True, max_retries=3)


@shared_task(name="worker.tasks.process_events", **COMMON)
def process_events() -> dict:
    """Beat's tick for new events: where this process's event consumer runs (it reads events as
    they arrive), keep it running (a dead one is replaced); where none can run, process here."""
    rt = runtime()
    rt.ledger.count("runs:process_events")
    if start_consumer():
        return {"acked": 0, "failed": 0, "finalized": 0, "consumer": True}
    res = processor.process_events(rt.ledger, rt.cfg, processor.consumer_name())
    if res.acked or res.failed:
        log.info("processed %d event(s), %d failed, %d reward(s) final", res.acked, res.failed, res.finalized)
    return {"acked": res.acked, "failed": res.failed, "finalized": res.finalized}


@shared_task(name="worker.tasks.finalize_due", **COMMON)
def finalize_due() -> int:
    rt = runtime()
    rt.ledger.count("runs:finalize_due")  # one count per run (each task's): shows whether beats doubled it
    n = processor.finalize_due(rt.ledger, rt.cfg, time.time())
    if n:
        log.info("finalized %d reward(s)", n)
    return n


@shared_task(name="worker.tasks.derive_abandonment", **COMMON)
def derive_abandonment() -> int:
    rt = runtime()
    rt.ledger.count("runs:derive_abandonment")
    return processor.derive_abandonment(rt.ledger, rt.settings.worker_abandon_idle_s, time.time())


@shared_task(name="worker.tasks.reclaim_stale", **COMMON)
def reclaim_stale() -> dict:
    rt = runtime()
    rt.ledger.count("runs:reclaim_stale")
    res = processor.reclaim_stale(rt.ledger, rt.cfg, processor.consumer_name(), rt.settings.worker_reclaim_idle_s,
                                  rt.settings.worker_max_deliveries)
    return {"acked": res.acked, "failed": res.failed, "finalized": res.finalized}


@shared_task(name="worker.tasks.ops_tick", **COMMON)
def ops_tick() -> dict:
    rt = runtime()
    rt.ledger.count("runs:ops_tick")
    client = rt.ledger.r
    out = monitor.ops_tick(monitor.store_for(client, rt.settings, rt.keys),
                           Registry(client, rt.keys, rt.settings.data_dir), rt.settings)
    if out["alarms"] or out["rollback"]:
        log.info("ops monitor: %s", out)
    return out


@shared_task(name="worker.tasks.archive", **COMMON)
def archive() -> dict:
    """Move finished sessions and processed stream entries from Redis to the archive, then apply
    retention, forgets and compaction (worker/archive/run.py)."""
    rt = runtime()
    rt.ledger.count("runs:archive")
    return run_archive(rt.ledger.r, rt.keys, rt.settings)
