"""The live comparison's sequential test (worker/ops/sequential.py) on plain lists (no Redis)."""
from __future__ import annotations

import math
import random

import pytest

from worker.ops.sequential import KEEP, PROMOTE, ROLLBACK, SequentialConfig, decide, pooled_std


def thumbs(rng: random.Random, mean: float, n: int) -> list[float]:
    """+1/-1 rewards with the given mean (the largest variance a [-1, 1] reward can have)."""
    return [1.0 if rng.random() < (1 + mean) / 2 else -1.0 for _ in range(n)]


def test_no_decision_before_min_samples_on_both_sides():
    cfg = SequentialConfig(min_samples=8)
    d = decide([-1.0] * 7, [1.0] * 100, cfg)
    assert (d.decision, d.reason, d.final, d.worse) == (KEEP, "insufficient_samples", False, False)
    assert d.diff is None and d.n_new == 7 and d.mean_base == 1.0
    assert decide([-1.0] * 8, [1.0] * 7, cfg).reason == "insufficient_samples"


def test_log_likelihood_ratio_hand_computed():
    # new: 10 x +0.5 (mean 0.5, ss 0); base: 5 x 1 and 5 x -1 (mean 0, ss 10); prior 8 x variance 1 (set here)
    cfg = SequentialConfig(worse_by=0.3, prior_weight=8.0, min_samples=2, max_samples=100)
    d = decide([0.5] * 10, [1.0] * 5 + [-1.0] * 5, cfg)
    s2 = (10 + 8) / (10 + 10 - 2 + 8)
    assert d.std == pytest.approx(math.sqrt(s2))
    assert d.llr == pytest.approx(0.3 / (s2 * (1 / 10 + 1 / 10)) * (0.5 + 0.15))
    assert d.diff == pytest.approx(0.5) and cfg.upper == pytest.approx(math.log(0.95 / 0.05))


def test_a_clearly_worse_version_is_rolled_back_and_a_better_one_promoted():
    rng = random.Random(1)
    base = thumbs(rng, 0.2, 60)
    worse = decide(thumbs(rng, -0.8, 20), base)
    assert (worse.decision, worse.reason, worse.worse, worse.final) == (ROLLBACK, "crossed_lower", True, True)
    better = decide(thumbs(rng, 0.9, 30), base)
    assert (better.decision, better.reason, better.worse) == (PROMOTE, "crossed_upper", False)


def test_an_undecided_version_is_kept_until_max_samples_then_decided_by_the_midpoint():
    cfg = SequentialConfig(worse_by=0.3, max_samples=12)
    base = [1.0, -1.0] * 30                              # mean 0
    tie = [1.0, -1.0] * 5 + [1.0]                        # 11 < max: too close to call
    assert decide(tie, base, cfg).decision == KEEP
    assert decide(tie + [-1.0], base, cfg).reason == "truncated"
    assert decide(tie + [-1.0], base, cfg).decision == PROMOTE    # diff 0 > -0.15
    slightly_worse = [1.0] * 5 + [-1.0] * 7              # mean -1/6 < -0.15
    d = decide(slightly_worse, base, cfg)
    assert (d.decision, d.reason) == (ROLLBACK, "truncated") and d.llr < 0


def test_constant_rewards_stay_finite_and_decide():
    d = decide([0.5] * 10, [0.5] * 10)
    assert math.isfinite(d.llr) and d.std > 0 and d.decision == KEEP     # the prior variance holds it back
    assert pooled_std([0.5] * 20, [0.5] * 20, 0.0) == 0.0
    assert decide([0.5] * 20, [0.5] * 20).decision == PROMOTE            # equal: evidence for 'fine' grows


def test_error_rates_on_seeded_simulations_stay_near_the_target():
    """Thumbs-only live traffic, canary share 0.5, 50 baseline rewards before, a look after every
    reward: ties are rarely rolled back, a canary worse by 0.5 is rarely promoted."""
    def one(rng, delta):
        base, new = thumbs(rng, 0.2, 50), []
        while True:
            if rng.random() < 0.5:
                new += thumbs(rng, 0.2 + delta, 1)
            else:
                base += thumbs(rng, 0.2, 1)
            d = decide(new, base)
            if d.final:
                return d.decision
    rng = random.Random(7)
    ties = [one(rng, 0.0) for _ in range(150)]
    worse = [one(rng, -0.5) for _ in range(150)]
    assert ties.count(ROLLBACK) / len(ties) < 0.35
    assert worse.count(PROMOTE) / len(worse) < 0.10
    assert worse.count(ROLLBACK) / len(worse) > 0.85


@pytest.mark.parametrize("kwargs, name", [
    ({"worse_by": 0.0}, "worse_by"), ({"alpha": 0.5}, "alpha"), ({"min_samples": 1}, "min_samples"),
    ({"min_samples": 10, "max_samples": 5}, "max_samples"), ({"prior_weight": -1.0}, "prior_weight"),
])
def test_config_validation_names_the_field(kwargs, name):
    with pytest.raises(ValueError, match=f"SequentialConfig.{name} must be"):
        SequentialConfig(**kwargs)


def test_non_finite_rewards_are_refused():
    with pytest.raises(ValueError, match="new_rewards contains a non-finite reward"):
        decide([0.0] * 9 + [float("nan")], [0.0] * 10)
