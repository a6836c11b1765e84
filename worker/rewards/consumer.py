"""The long-lived event consumer of one reward-worker process: a blocking XREADGROUP in
batches, one atomic ledger call per batch, then the rewards that became due.

Why a loop and not a task per batch: a beat tick per batch paid a Celery round trip and a
fsync'd Redis round trip per event, and waited up to a tick for new work (~230 events/s).
The loop waits on Redis itself (XREADGROUP BLOCK returns as soon as one event arrives, so a
zero wait window gives a final reward in milliseconds) and batches grow with the backlog.

Exactly-once is the ledger's (every write keyed, acks after the effect); what this loop holds
unacked when its process dies is reclaimed by reclaim_stale (XAUTOCLAIM) and dead-lettered
after too many deliveries, as before. No Celery here: worker/context.py runs it in a thread.
"""
from __future__ import annotations

import logging
import threading
import time

import redis

from worker.rewards import processor
from worker.rewards.config import RewardConfig
from worker.rewards.ledger import RewardLedger

log = logging.getLogger(__name__)

BLOCK_MS = 1000  # longest wait for new events; due rewards are also checked this often when idle
BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)  # after consecutive failures (Redis down, a bug)


class EventConsumer:
    def __init__(self, ledger: RewardLedger, cfg: RewardConfig, name: str, batch: int = processor.BATCH,
                 block_ms: int = BLOCK_MS):
        self.ledger, self.cfg, self.name = ledger, cfg, name
        self.batch, self.block_ms = batch, block_ms
        self.own_pending: str | None = "0"  # after a failure: redo what this consumer holds, from this id
        self.totals = processor.BatchResult()

    def step(self) -> processor.BatchResult:
        """One batch: read (blocking), process, finalize what is due."""
        result = processor.BatchResult()
        if self.own_pending is not None:
            # one pass over our own delivered-but-unacked entries, e.g. a batch that met a Redis
            # error (entries that fail on their own are left to reclaim_stale and its count)
            entries = self.ledger.read_own_pending(self.name, self.batch, self.own_pending)
            self.own_pending = entries[-1][0] if entries else None
            entries = [(sid, f) for sid, f in entries if f]
        else:
            entries = self.ledger.read_new(self.name, self.batch, self.block_ms)
        if entries:
            processor.process_entries(self.ledger, self.cfg, entries, result)
        result.finalized = processor.finalize_due(self.ledger, self.cfg, time.time())
        self.totals.acked += result.acked
        self.totals.failed += result.failed
        self.totals.finalized += result.finalized
        return result

    def run(self, stop: threading.Event) -> None:
        failures = 0
        log.info("event consumer %s: reading up to %d events per batch", self.name, self.batch)
        while not stop.is_set():
            try:
                self.step()
                failures = 0
            except Exception as exc:  # the loop outlives any one batch: log, back off, redo what we hold
                transient = isinstance(exc, (redis.ConnectionError, redis.TimeoutError))
                (log.warning if transient else log.exception)("event consumer %s: %s: %s", self.name,
                                                               type(exc).__name__, exc)
                self.own_pending = "0"
                stop.wait(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1
        log.info("event consumer %s stopped: %d events acked, %d failed, %d rewards final", self.name,
                 self.totals.acked, self.totals.failed, self.totals.finalized)


class ConsumerThread:
    """An EventConsumer on a daemon thread: stop() lets the batch in hand finish."""

    def __init__(self, consumer: EventConsumer):
        self.consumer = consumer
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=consumer.run, args=(self.stop_event,), name="event-consumer",
                                       daemon=True)  # never holds up an exit: unacked work is reclaimed

    def start(self) -> ConsumerThread:
        self.thread.start()
        return self

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
