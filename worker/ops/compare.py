"""Parent-vs-child version comparison: is the newest adapter version's mean reward
significantly below its parent's? Pure: numpy in, a verdict dict out."""
from __future__ import annotations

import math
from collections.abc import Iterable
from statistics import NormalDist
from typing import Any

import numpy as np

from worker.ops.result import DriftResult, _invalid, _require_int, _require_number


def _summary(values: np.ndarray, z: float) -> dict[str, Any]:
    n = int(values.size)
    mean = float(values.mean()) if n else None
    std = float(values.std(ddof=1)) if n >= 2 else None
    ci = None
    if std is not None:
        half = z * std / math.sqrt(n)
        ci = [mean - half, mean + half]
    return {"n": n, "mean": mean, "std": std, "ci95": ci}


def _as_values(name: str, values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                       dtype=float).ravel()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"compare_versions: {name} contains a non-finite value")
    return array


def _check_arguments(min_samples: int, alpha: float, min_effect: float) -> None:
    owner = "compare_versions"
    _require_int(owner, "min_samples", min_samples, 2)
    if not 0 < _require_number(owner, "alpha", alpha) < 0.5:
        raise _invalid(owner, "alpha", alpha, "in (0, 0.5)")
    if _require_number(owner, "min_effect", min_effect) < 0:
        raise _invalid(owner, "min_effect", min_effect, ">= 0")


def _welch(parent: np.ndarray, child: np.ndarray, critical: float, alpha: float) -> tuple[float, dict[str, Any]]:
    """The one-sided Welch test of "child < parent" (normal approximation): its statistic and
    the figures the evidence reports."""
    var_p, var_c = float(parent.var(ddof=1)), float(child.var(ddof=1))
    se = max(math.sqrt(var_p / parent.size + var_c / child.size), 1e-12)  # constant inputs
    diff = float(child.mean() - parent.mean())
    statistic = -diff / se
    p_value = 0.5 * math.erfc(statistic / math.sqrt(2))
    # Welch-Satterthwaite df, reported only: with n >= min_samples the normal is close
    a, b = var_p / parent.size, var_c / child.size
    df = (a + b) ** 2 / (a * a / (parent.size - 1) + b * b / (child.size - 1)) if a + b else None
    return statistic, {"diff": diff, "diff_ci": [diff - critical * se, diff + critical * se],
                       "diff_ci_level": 1 - 2 * alpha, "standard_error": se,
                       "p_value": p_value, "welch_df": df}


def compare_versions(parent_rewards: Iterable[float], child_rewards: Iterable[float],
                     min_samples: int = 50, alpha: float = 0.01, min_effect: float = 0.05,
                     *, metric: str = "reward", version: str | None = None,
                     parent_version: str | None = None) -> DriftResult:
    """One-sided Welch test of "child reward < parent reward" (normal approximation).

    Alarms only when both sides have >= min_samples rewards, p < alpha, and the drop of the
    mean is at least min_effect. statistic = (parent mean - child mean) / standard error;
    threshold = the normal quantile at 1 - alpha, so alarm implies statistic > threshold.
    """
    _check_arguments(min_samples, alpha, min_effect)
    parent = _as_values("parent_rewards", parent_rewards)
    child = _as_values("child_rewards", child_rewards)
    normal = NormalDist()
    critical = normal.inv_cdf(1 - alpha)
    evidence: dict[str, Any] = {
        "parent_version": parent_version, "alpha": alpha, "min_effect": min_effect,
        "min_samples": min_samples, "parent": _summary(parent, normal.inv_cdf(0.975)),
        "child": _summary(child, normal.inv_cdf(0.975))}
    subject = f"version {version}" if version is not None else "the child version"
    against = f"parent {parent_version}" if parent_version is not None else "its parent"

    def verdict(alarm: bool, reason: str, statistic: float, message: str) -> DriftResult:
        evidence["reason"] = reason
        return DriftResult(detector="welch", metric=metric, version=version, alarm=alarm,
                           direction="drop" if alarm else None, index=None,
                           statistic=statistic, threshold=critical, evidence=evidence,
                           message=message)

    if parent.size < min_samples or child.size < min_samples:
        return verdict(False, "insufficient_samples", 0.0, (
            f"Not enough {metric} data to compare {subject} with {against}: "
            f"{child.size} child and {parent.size} parent values, need {min_samples} each."))

    statistic, welch = _welch(parent, child, critical, alpha)
    evidence.update(welch)
    diff, p_value = welch["diff"], welch["p_value"]
    summary = (f"{metric} of {subject} {float(child.mean()):.3f} vs {against} "
               f"{float(parent.mean()):.3f} ({diff:+.3f}, one-sided p={p_value:.2g}, "
               f"n={child.size} vs {parent.size})")
    if diff >= 0:
        return verdict(False, "no_drop", statistic, f"No drop: {summary}.")
    if p_value >= alpha:
        return verdict(False, "not_significant", statistic,
                       f"Drop not significant at alpha={alpha:g}: {summary}.")
    if -diff < min_effect:
        return verdict(False, "effect_too_small", statistic,
                       f"Significant but below the minimum effect {min_effect:g}: {summary}.")
    return verdict(True, "significant_drop", statistic,
                   f"Significant drop: {summary}; consider rolling back {subject}.")


