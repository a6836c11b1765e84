"""A learner run that lost its lock finds out within a heartbeat and stops training, instead
of training to the end for a commit that must fail."""
from __future__ import annotations

import copy
import time

import pytest
import redis

from learner.config import StepSettings, TrainConfig
from learner.dataset import Dataset
from learner.runner import LearnerLock
from learner.train import StepHooks, train, wrap_with_lora
from tests.support.learner import as_policy, as_samples

pytestmark = pytest.mark.integration


def test_the_heartbeat_notices_a_lock_taken_over(settings, keys):
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    lock = LearnerLock(r, keys, ttl_s=1.0)
    try:
        assert lock.acquire() and not lock.lost
        r.set(keys.learn_lock, "someone-else")
        deadline = time.monotonic() + 3.0
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.lost
    finally:
        lock.release()
        r.close()
    assert r.get(keys.learn_lock) == "someone-else"  # release never deletes another run's lock


def test_training_stops_at_the_first_step_after_the_lock_is_lost(tiny, logged):
    cfg = TrainConfig(minibatch_size=4, min_samples=1, step=StepSettings(min_steps=100, max_epochs=50))
    model = wrap_with_lora(copy.deepcopy(tiny.model), cfg, None)
    data = Dataset(train=as_samples(logged[:8], lambda i: 1.0), holdout=[], pairs=[], last_id=None, last_pair_id=None)
    calls = []

    def lost_after_three_steps() -> bool:
        calls.append(1)
        return len(calls) > 3

    stats = train(as_policy(tiny, model), data, cfg, progress=False, hooks=StepHooks(should_stop=lost_after_three_steps))
    assert stats["stopped"] is True and stats["steps"] == 3  # of 50 epochs x 2 steps
