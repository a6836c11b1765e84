"""A beat scheduler that only sends while it holds the Redis leader lock, so any number of
`rewardloop beat` processes can run (for availability) and tasks are still sent once per period."""
from __future__ import annotations

import logging
import secrets
import socket

import redis
from celery.beat import Scheduler

from worker.context import runtime

log = logging.getLogger(__name__)

LOCK = "beat"
STANDBY_POLL_S = 1.0


class LeaderScheduler(Scheduler):
    """In-memory schedule (no shelve file two beats could fight over) gated by a lock."""

    def __init__(self, *args, **kwargs):
        self.token = f"{socket.gethostname()}-{secrets.token_hex(6)}"
        self.leader = False
        super().__init__(*args, **kwargs)

    def _hold_lock(self) -> bool:
        rt = runtime()
        try:
            held = rt.ledger.acquire_or_renew(LOCK, self.token, rt.settings.beat_lock_ttl_s)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # unsure whether we still lead: send nothing (a missed tick is harmless, a doubled one is not)
            log.warning("beat %s: Redis unreachable (%s); not sending until it answers", self.token, exc)
            held = False
        if held != self.leader:
            log.info("beat %s: %s", self.token, "leader: sending periodic tasks" if held else
                     "standby: another beat holds the lock")
            self.leader = held
        return held

    def tick(self, *args, **kwargs):
        if not self._hold_lock():
            return STANDBY_POLL_S
        # never sleep past a lock renewal
        return min(super().tick(*args, **kwargs), runtime().settings.beat_lock_ttl_s / 3)

    def close(self):
        if self.leader:
            self.leader = False  # close() may run twice at shutdown
            runtime().ledger.release(LOCK, self.token)
            log.info("beat %s: released the leader lock", self.token)
        super().close()
