"""What one chat server reports about its load: the busy signal a learner on the same machine
yields to, and chat throughput split by whether a learner run is on.

Every LOAD_EVERY_S the server writes one field of the `servers` hash (core/keys.py): streams
generating and waiting for their first token, whether it saw the learner lock (`learn_lock`,
held for a whole run), and its cumulative counters per learner state (`idle` | `training`):
tokens streamed, busy seconds (wall time with at least one stream generating or waiting),
time-to-first-token count, sum and histogram. The ops monitor folds the counters' increments
into the per-minute series (worker/ops/series.py: chat tokens/s = tokens / busy seconds, TTFT
p95 from the histogram); /metrics carries them per server (service/serving/metrics.py).

ChatLoad is plain counting (no I/O); `publish_forever` is the server's loop around it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from core.server_load import STATES, TTFT_BUCKETS_S, ServerLoad

log = logging.getLogger(__name__)

LOAD_EVERY_S = 1.0


def server_id() -> str:
    """host:pid:start, unique per server process (one field of `servers` each)."""
    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"


@dataclass
class ChatLoad:
    """Cumulative chat counters by learner state; `training` is what the last look at the lock
    saw. Busy time is exact: it runs from a request's submission while any request is in
    flight (waiting or generating), split where the learner state changes."""
    training: bool = False
    active: int = 0
    waiting: int = 0
    in_flight: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    _busy_since: float = 0.0

    @property
    def state(self) -> str:
        return STATES[self.training]

    def _add(self, name: str, value: float, state: str | None = None) -> None:
        key = f"{name}_{state or self.state}"
        self.counters[key] = self.counters.get(key, 0.0) + value

    def _close_busy(self, now: float) -> None:
        """Count the busy time since _busy_since for the current state; restart it at now."""
        if self.in_flight > 0:
            self._add("busy_s", max(0.0, now - self._busy_since))
        self._busy_since = now

    def stream_started(self, now: float) -> None:
        if self.in_flight == 0:
            self._busy_since = now
        self.in_flight += 1

    def stream_ended(self, now: float) -> None:
        self._close_busy(now)
        self.in_flight = max(0, self.in_flight - 1)

    def token(self, n: int = 1) -> None:
        self._add("tokens", n)

    def first_token(self, seconds: float, state: str | None = None) -> None:
        """One reply's time to first token, counted for `state` (the learner state when its first
        token came; default now)."""
        for name, value in [("ttft_n", 1.0), ("ttft_sum", seconds)] + [
                (f"ttft_le_{b:g}", 1.0) for b in TTFT_BUCKETS_S if seconds <= b]:
            self._add(name, value, state)

    def observe(self, active: int, waiting: int, training: bool, now: float) -> None:
        """Every LOAD_EVERY_S: the gauges, and the learner state (busy time splits where it changes)."""
        if training != self.training:
            self._close_busy(now)
        self.active, self.waiting, self.training = active, waiting, training

    def heartbeat(self, now: float) -> ServerLoad:
        self._close_busy(now)   # the busy time so far counts now
        return ServerLoad(now, self.active, self.waiting, self.training, dict(self.counters))


async def publish_forever(client, keys, sid: str, load: ChatLoad, engine, chat, *, metrics=None,
                          every_s: float = LOAD_EVERY_S) -> None:
    """The server's load loop: look at the learner lock, sample the engine, write the heartbeat.
    A Redis error is logged and the loop goes on (the busy signal is advisory); on cancel the
    server's field is removed."""
    try:
        while True:
            try:
                training = bool(await client.exists(keys.learn_lock))
                active = sum(chat.user_streams.values()) if chat is not None else 0
                now = time.time()
                load.observe(active, int(getattr(engine, "waiting", 0) or 0), training, now)
                if metrics is not None:
                    metrics.learner_training.set(float(training))
                await client.hset(keys.servers, sid, load.heartbeat(now).to_redis())
            except Exception as exc:   # Redis away or a bad sample: logged, the next tick retries
                log.warning("chat load heartbeat failed: %s", exc)
            await asyncio.sleep(every_s)
    finally:
        try:
            await asyncio.shield(client.hdel(keys.servers, sid))
        except Exception as exc:   # shutting down: readers ignore stale entries anyway
            log.info("could not remove this server's load entry: %s", exc)
