"""Token bucket (pure): how many frames a connection may send per second."""
from __future__ import annotations

import time


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock=time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate!r} burst={burst!r}")
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.updated = clock()

    def take(self) -> float:
        """0.0 when allowed; otherwise the seconds to wait before retrying."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class KeyedBuckets:
    """One TokenBucket per key (a user, a client address), memory bounded: past `max_keys`
    the least recently used half is dropped -- a dropped key starts again with a full
    bucket, which only ever errs towards allowing."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000, clock=time.monotonic):
        TokenBucket(rate, burst, clock)   # validates rate and burst
        if max_keys < 2:
            raise ValueError(f"max_keys must be >= 2, got {max_keys!r}")
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str) -> float:
        """0.0 when `key` may go on; otherwise the seconds it should wait."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                for old in list(self._buckets)[: self.max_keys // 2]:
                    del self._buckets[old]
            bucket = TokenBucket(self.rate, self.burst, self.clock)
        self._buckets[key] = bucket    # re-inserted: dict order is least recently used first
        return bucket.take()

    def __len__(self) -> int:
        return len(self._buckets)
