"""Counterfactual estimators on hand-computed values and seeded synthetic bandit logs."""

import dataclasses
import math

import numpy as np
import pytest

from learner.counterfactual import (
    Estimate,
    bootstrap_ci,
    effective_sample_size,
    estimate,
    importance_weights,
    ips,
    snips,
)

# 3-action bandit: each "reply" is one action; its sequence log-prob is log p(action).
BEHAVIOR = np.array([0.5, 0.3, 0.2])
TARGET = np.array([0.2, 0.3, 0.5])
MEAN_REWARD = np.array([0.0, 0.5, 1.0])
TRUE_TARGET_VALUE = float(TARGET @ MEAN_REWARD)  # 0.65
TRUE_BEHAVIOR_VALUE = float(BEHAVIOR @ MEAN_REWARD)  # 0.35


def _bandit_logs(n: int, seed: int, behavior=BEHAVIOR, target=TARGET):
    """Logged (rewards, target_logp, behavior_logp) [N] with Bernoulli rewards."""
    rng = np.random.default_rng(seed)
    actions = rng.choice(len(behavior), size=n, p=behavior)
    rewards = (rng.random(n) < MEAN_REWARD[actions]).astype(float)
    return rewards, np.log(target[actions]), np.log(behavior[actions])


# --- weights and point estimates -------------------------------------------------------------


def test_importance_weights_hand_values_and_clip():
    w = importance_weights([-1.0, -2.0], [-2.0, -1.0])
    assert w == pytest.approx([math.e, 1 / math.e])
    assert importance_weights([-1.0, -2.0], [-2.0, -1.0], clip=2.0) == pytest.approx(
        [2.0, 1 / math.e]
    )


def test_importance_weights_are_stable_for_long_replies():
    # sequence log-probs of long replies are in the hundreds or thousands
    w = importance_weights([-1000.0, -3000.0, -500.0], [-3000.0, -1000.0, -500.5])
    assert np.all(np.isfinite(w))
    assert w[1] == 0.0
    assert w[2] == pytest.approx(math.exp(0.5))


def test_importance_weights_reject_bad_input():
    with pytest.raises(ValueError, match="lengths"):
        importance_weights([0.0, 0.0], [0.0])
    with pytest.raises(ValueError, match="clip"):
        importance_weights([0.0], [0.0], clip=0.0)
    with pytest.raises(ValueError, match="NaN"):
        importance_weights([float("nan")], [0.0])


def test_ips_snips_ess_hand_values():
    r = [1.0, 0.0, 1.0]
    w = [2.0, 1.0, 0.5]
    assert ips(r, w) == pytest.approx(2.5 / 3)
    assert snips(r, w) == pytest.approx(2.5 / 3.5)
    assert effective_sample_size(w) == pytest.approx(3.5**2 / 5.25)


def test_degenerate_weights():
    assert effective_sample_size([0.0, 0.0]) == 0.0
    assert math.isnan(snips([1.0, 0.0], [0.0, 0.0]))
    assert effective_sample_size([1.0, 0.0, 0.0]) == pytest.approx(1.0)


def test_evaluating_the_behavior_policy_itself():
    rewards, _, behavior_logp = _bandit_logs(200, seed=1)
    w = importance_weights(behavior_logp, behavior_logp)
    assert np.array_equal(w, np.ones(200))

    est = estimate(rewards, behavior_logp, behavior_logp, n_boot=200)
    assert isinstance(est, Estimate)
    assert est.ips == pytest.approx(rewards.mean())
    assert est.snips == pytest.approx(rewards.mean())
    assert est.logged_mean == pytest.approx(rewards.mean())
    assert est.ess == pytest.approx(200)
    assert est.n == 200
    assert est.warning is None
    assert est.snips_ci[0] <= est.logged_mean <= est.snips_ci[1]


# --- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_is_seeded_and_ordered():
    rewards, t, b = _bandit_logs(100, seed=2)
    w = importance_weights(t, b)
    first = bootstrap_ci(rewards, w, snips, n_boot=200, seed=7)
    assert first == bootstrap_ci(rewards, w, snips, n_boot=200, seed=7)
    assert first != bootstrap_ci(rewards, w, snips, n_boot=200, seed=8)
    assert first[0] < snips(rewards, w) < first[1]
    narrow = bootstrap_ci(rewards, w, snips, n_boot=200, alpha=0.5, seed=7)
    assert first[0] <= narrow[0] <= narrow[1] <= first[1]


def test_bootstrap_interval_covers_true_target_value():
    rewards, t, b = _bandit_logs(2000, seed=0)
    est = estimate(rewards, t, b, n_boot=500)
    for name, (lo, hi) in (("ips", est.ips_ci), ("snips", est.snips_ci)):
        assert lo <= TRUE_TARGET_VALUE <= hi, f"{name} CI {lo:.3f}..{hi:.3f} misses 0.65"
        # and it is informative: the logged (behavior) value lies outside
        assert not lo <= TRUE_BEHAVIOR_VALUE <= hi, f"{name} CI cannot tell the policies apart"
    assert est.logged_mean == pytest.approx(TRUE_BEHAVIOR_VALUE, abs=0.05)
    # Kish ESS for these policies is n / sum(target^2 / behavior) = n / 1.63
    assert est.ess == pytest.approx(2000 / 1.63, rel=0.1)
    assert est.warning is None


def test_bootstrap_coverage_over_repeated_logs_is_near_nominal():
    hits = 0
    reps = 40
    for seed in range(reps):
        rewards, t, b = _bandit_logs(300, seed=100 + seed)
        w = importance_weights(t, b)
        lo, hi = bootstrap_ci(rewards, w, snips, n_boot=200, seed=seed)
        hits += lo <= TRUE_TARGET_VALUE <= hi
    assert hits / reps >= 0.85  # nominal 95%; bootstrap on 300 logs is slightly optimistic


# --- low effective sample size ---------------------------------------------------------------


def test_low_ess_warning_fires_when_target_says_rarely_logged_things():
    behavior = np.array([0.98, 0.01, 0.01])
    target = np.array([0.01, 0.01, 0.98])
    rewards, t, b = _bandit_logs(300, seed=3, behavior=behavior, target=target)
    est = estimate(rewards, t, b, min_ess=30, n_boot=100)
    assert est.ess < 30
    assert est.warning is not None
    assert est.warning.startswith(f"effective sample size {est.ess:.1f} < 30:")
    assert "collect more data or compare closer versions" in est.warning


def test_warning_threshold_is_configurable():
    rewards, t, b = _bandit_logs(50, seed=4)
    assert estimate(rewards, t, b, min_ess=10, n_boot=50).warning is None
    assert estimate(rewards, t, b, min_ess=1000, n_boot=50).warning is not None


def test_estimate_is_frozen_and_clip_is_applied():
    rewards, t, b = _bandit_logs(100, seed=5)
    est = estimate(rewards, t, b, clip=1.5, n_boot=50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.ips = 0.0  # type: ignore[misc]
    w = np.minimum(np.exp(t - b), 1.5)
    assert est.ips == pytest.approx(float(np.mean(w * rewards)))
