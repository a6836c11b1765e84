"""Token bucket with a fake clock: burst, wait time, refill, cap."""

import pytest

from service.serving.ratelimit import KeyedBuckets, TokenBucket


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_burst_then_wait_time():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx((1 - 0.0) / 2.0)   # empty: 0.5 s
    assert bucket.take() == pytest.approx(0.5)              # a refused take costs nothing


def test_wait_time_for_a_partial_token():
    clock = Clock()
    bucket = TokenBucket(rate=4.0, burst=1, clock=clock)
    assert bucket.take() == 0.0
    clock.t += 0.1                                   # refills 0.4 tokens
    assert bucket.take() == pytest.approx((1 - 0.4) / 4.0)


def test_refills_over_time():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=2, clock=clock)
    bucket.take(), bucket.take()
    assert bucket.take() > 0
    clock.t += 0.5                                   # exactly one token back
    assert bucket.take() == 0.0
    assert bucket.take() > 0
    clock.t += 1.0                                   # two tokens back
    assert [bucket.take(), bucket.take()] == [0.0, 0.0]
    assert bucket.take() > 0


def test_refill_is_capped_at_burst():
    clock = Clock()
    bucket = TokenBucket(rate=10.0, burst=3, clock=clock)
    clock.t += 3600
    assert [bucket.take() for _ in range(3)] == [0.0] * 3
    assert bucket.take() == pytest.approx(0.1)


@pytest.mark.parametrize("rate, burst", [(0, 5), (-1, 5), (1, 0), (1, 0.5)])
def test_rejects_bad_parameters(rate, burst):
    with pytest.raises(ValueError, match="rate") as info:
        TokenBucket(rate=rate, burst=burst)
    assert repr(rate) in str(info.value) and repr(burst) in str(info.value)


def test_keyed_buckets_are_independent_per_key():
    clock = Clock()
    buckets = KeyedBuckets(rate=1.0, burst=2, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert buckets.take("b") == 0.0          # another key has its own burst
    clock.t += 1.0
    assert buckets.take("a") == 0.0


def test_keyed_buckets_memory_is_bounded_and_keeps_the_recent_keys():
    clock = Clock()
    buckets = KeyedBuckets(rate=1.0, burst=1, max_keys=10, clock=clock)
    buckets.take("hot")
    for i in range(9):
        buckets.take(f"k{i}")
    assert buckets.take("hot") > 0           # touched last: kept through the eviction below
    for i in range(9, 30):
        buckets.take(f"k{i}")
        assert len(buckets) <= 10
    assert buckets.take("k29") > 0           # the newest keys are still limited


@pytest.mark.parametrize("max_keys", [0, 1])
def test_keyed_buckets_reject_bad_bounds(max_keys):
    with pytest.raises(ValueError, match="max_keys"):
        KeyedBuckets(1.0, 1, max_keys=max_keys)
