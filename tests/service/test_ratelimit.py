"""Token bucket with a fake clock: burst, wait time, refill, cap."""

import pytest

from service.serving.ratelimit import TokenBucket


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
