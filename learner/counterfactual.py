"""Counterfactual (off-policy) estimates of an adapter's reward on logged replies.

Every logged reply was sampled by a behavior policy (the adapter that served it) and carries
its reward and the sequence log-probability the behavior policy gave it. Re-scoring the same
replies under a target adapter gives importance weights ``w = p_target / p_behavior``; from
them:

* IPS   ``mean(w * r)`` -- unbiased, but high variance when a few weights are large.
* SNIPS ``sum(w * r) / sum(w)`` -- self-normalised: slightly biased, far lower variance, and
  always inside the range of observed rewards. The gate compares adapters with it.
* ESS   ``(sum w)^2 / sum w^2`` -- how many logged replies the estimate is really worth. When
  the target would say things the behavior policy rarely said, a handful of replies carry all
  the weight and no estimate can be trusted; ``estimate`` then sets a warning.

Numpy only (no torch, no I/O), so the gate and ``rewardloop evaluate`` share it. Arrays are
1-D with one entry per logged reply (shape [N]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Estimate",
    "bootstrap_ci",
    "effective_sample_size",
    "estimate",
    "importance_weights",
    "ips",
    "snips",
]

Estimator = Callable[[np.ndarray, np.ndarray], float]

# largest log-weight whose exp() is finite in float64 (log(1.8e308) ~ 709.78), with margin so
# sums of a few such weights stay finite too
_MAX_LOG_WEIGHT = 700.0


def _as_1d(name: str, values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one entry per logged reply), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; drop those replies first")
    return arr


def _check_same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must have one entry per logged reply, got lengths {lengths}")


def importance_weights(
    target_seq_logp, behavior_seq_logp, clip: float | None = None
) -> np.ndarray:
    """Weights [N] = ``exp(target - behavior)`` from sequence log-probs [N], [N].

    Computed in log space: the difference is taken first and capped (at ``log(clip)`` when
    ``clip`` is given, else just below float64 overflow) before ``exp``, so long replies whose
    log-probs are in the hundreds never produce inf or 0/0. ``clip`` caps each weight
    (clipped IPS: trades a little bias for much lower variance).
    """
    target = _as_1d("target_seq_logp", target_seq_logp)
    behavior = _as_1d("behavior_seq_logp", behavior_seq_logp)
    _check_same_length(target_seq_logp=target, behavior_seq_logp=behavior)
    if clip is not None and not (np.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0 or None, got {clip!r}")
    log_w = target - behavior  # [N]
    cap = _MAX_LOG_WEIGHT if clip is None else min(float(np.log(clip)), _MAX_LOG_WEIGHT)
    return np.exp(np.minimum(log_w, cap))


def ips(rewards, w) -> float:
    """Inverse propensity scoring: ``mean(w * r)``. Unbiased for the target's mean reward."""
    r, w = _as_1d("rewards", rewards), _as_1d("w", w)
    _check_same_length(rewards=r, w=w)
    if len(r) == 0:
        return float("nan")
    return float(np.mean(w * r))


def snips(rewards, w) -> float:
    """Self-normalised IPS: ``sum(w * r) / sum(w)``; NaN when every weight is 0."""
    r, w = _as_1d("rewards", rewards), _as_1d("w", w)
    _check_same_length(rewards=r, w=w)
    total = float(np.sum(w))
    if total <= 0:
        return float("nan")
    return float(np.sum(w * r) / total)


def effective_sample_size(w) -> float:
    """Kish effective sample size ``(sum w)^2 / sum w^2``: N when all weights are equal."""
    w = _as_1d("w", w)
    sq = float(np.sum(w * w))
    if sq <= 0:
        return 0.0
    return float(np.sum(w)) ** 2 / sq


def bootstrap_ci(
    rewards,
    w,
    estimator: Estimator,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` interval for ``estimator(rewards, w)``.

    Resamples logged replies with replacement ``n_boot`` times (seeded, so the gate's verdict is
    reproducible) and returns the ``alpha/2`` and ``1 - alpha/2`` quantiles. Resamples where the
    estimator is undefined (NaN, e.g. SNIPS with all weights 0) are left out; (NaN, NaN) when
    none is defined.
    """
    r, w = _as_1d("rewards", rewards), _as_1d("w", w)
    _check_same_length(rewards=r, w=w)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")
    n = len(r)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # [n_boot, N]
    stats = np.array([estimator(r[i], w[i]) for i in idx], dtype=np.float64)  # [n_boot]
    stats = stats[np.isfinite(stats)]
    if len(stats) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    """Counterfactual reward of a target adapter on logged replies, with its reliability."""

    ips: float
    ips_ci: tuple[float, float]
    snips: float
    snips_ci: tuple[float, float]
    ess: float  # effective sample size of the importance weights
    n: int  # logged replies used
    logged_mean: float  # mean reward actually observed (the behavior policy's value)
    warning: str | None = None  # set when the estimate should not be trusted


def estimate(
    rewards,
    target_seq_logp,
    behavior_seq_logp,
    *,
    min_ess: float = 30,
    clip: float | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Estimate:
    """IPS and SNIPS estimates, bootstrap intervals and ESS for one target adapter.

    ``rewards`` [N] logged rewards, ``target_seq_logp`` [N] each reply's log-prob under the
    adapter being evaluated, ``behavior_seq_logp`` [N] under the adapter that served it.
    ``warning`` is set when the effective sample size is below ``min_ess``.
    """
    r = _as_1d("rewards", rewards)
    w = importance_weights(target_seq_logp, behavior_seq_logp, clip=clip)  # [N]
    _check_same_length(rewards=r, target_seq_logp=w)
    ess = effective_sample_size(w)
    warning = None
    if ess < min_ess:
        warning = (
            f"effective sample size {ess:.1f} < {min_ess:g}: too few logged replies resemble "
            f"what this adapter would say; collect more data or compare closer versions"
        )
    return Estimate(
        ips=ips(r, w),
        ips_ci=bootstrap_ci(r, w, ips, n_boot=n_boot, alpha=alpha, seed=seed),
        snips=snips(r, w),
        snips_ci=bootstrap_ci(r, w, snips, n_boot=n_boot, alpha=alpha, seed=seed),
        ess=ess,
        n=len(r),
        logged_mean=float(np.mean(r)) if len(r) else float("nan"),
        warning=warning,
    )


def doubly_robust(rewards, w, q_logged, q_target, *, n_boot: int = 1000, alpha: float = 0.05,
                  seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Doubly-robust estimate of the target's mean reward, with a bootstrap interval.

    ``q_target`` [N]: the reward model's value of the target on each logged prompt (its score
    of a reply the target would give); ``q_logged`` [N]: its score of the logged reply;
    ``w`` [N] importance weights, ``rewards`` [N] observed. ::

        DR = mean(q_target) + sum(w * (r - q_logged)) / sum(w)

    The direct term carries the estimate where weights are noisy; the (self-normalised)
    correction removes the reward model's bias where they are not. Unbiased when either the
    weights or the reward model is right.
    """
    r, w = _as_1d("rewards", rewards), _as_1d("w", w)
    ql, qt = _as_1d("q_logged", q_logged), _as_1d("q_target", q_target)
    _check_same_length(rewards=r, w=w, q_logged=ql, q_target=qt)
    if len(r) == 0:
        return float("nan"), (float("nan"), float("nan"))

    def dr(idx: np.ndarray) -> float:
        ws = w[idx]
        total = float(ws.sum())
        corr = float(np.sum(ws * (r[idx] - ql[idx])) / total) if total > 0 else 0.0
        return float(qt[idx].mean()) + corr

    point = dr(np.arange(len(r)))
    rng = np.random.default_rng(seed)
    stats = np.array([dr(rng.integers(0, len(r), size=len(r))) for _ in range(n_boot)])
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return point, (float(low), float(high))
