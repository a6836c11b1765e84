"""The live comparison of a new adapter version: a truncated sequential probability ratio test
(Wald's SPRT) on the difference of mean rewards, canary minus the version it would replace.
Pure: plain lists of rewards in, a Decision out (worker/ops/monitor.py does the I/O).

    theta = mean reward of the new version - mean reward of the baseline (the stable)
    H_worse: theta = -worse_by        H_fine: theta = 0
    d = difference of the sample means, V = s^2 (1/n_new + 1/n_base)
    LLR = log L(H_fine) / L(H_worse) = worse_by / V * (d + worse_by / 2)     (normal likelihood of d)
    promote   LLR >= log((1 - alpha) / alpha)       "not worse": promoted (canary) or kept (stable)
    rollback  LLR <= log(alpha / (1 - alpha))       "worse": rolled back
    keep      between the two, until the new version has max_samples rewards: then the sign of
              LLR decides (d above or below -worse_by / 2)

The test may be looked at after every reward (each monitor tick): Wald's bounds hold for a
sequence of looks, unlike a fixed-sample test repeated on a growing sample. The variance s^2 is
the two samples' pooled variance shrunk towards 1.0 (the largest a [-1, 1] reward with mean 0
can have) with `prior_weight` pseudo-observations, so a few lucky equal rewards cannot make the
test overconfident. A difference smaller than worse_by is a tie: either decision is acceptable
there, and the test takes about the most samples.

Error rates, samples to a decision and the canary share that keeps a decision within a few
dozen rewarded replies: bench/gate_sim.py --live (docs/operators.md, "How the canary is decided").
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from core.config_fields import ConfigError, setting, validate

PROMOTE, ROLLBACK, KEEP = "promote", "rollback", "keep"


@dataclass(frozen=True)
class SequentialConfig:
    worse_by: float = setting(0.3, (
        "Drop of the mean reward (reward units, rewards in [-1, 1]) that counts as worse: the test "
        "tells a version this much worse from one as good as its baseline. Smaller drops are ties."), gt=0, le=2)
    alpha: float = setting(0.05, (
        "Target rate of each wrong decision: promoting a version worse by worse_by, rolling back a "
        "version as good as its baseline (Wald's bounds; truncation adds to it, see bench/gate_sim.py)."),
        gt=0, lt=0.5)
    min_samples: int = setting(8, "Rewarded replies needed on each side before any decision.", ge=2)
    max_samples: int = setting(40, (
        "Rewarded replies of the new version at which the test decides anyway (truncation): "
        "promote when its mean is above baseline - worse_by/2, else roll back."), ge=2)
    prior_weight: float = setting(4.0, "Pseudo-observations of variance 1.0 mixed into the pooled variance estimate.",
                                  ge=0)

    def __post_init__(self) -> None:
        validate(self)
        if self.max_samples < self.min_samples:
            raise ConfigError(f"SequentialConfig.max_samples must be an integer >= min_samples ({self.min_samples}); "
                              f"got {self.max_samples!r}")

    @property
    def upper(self) -> float:
        """log((1 - alpha) / alpha): LLR at or above it promotes."""
        return math.log((1 - self.alpha) / self.alpha)

    @property
    def lower(self) -> float:
        """log(alpha / (1 - alpha)): LLR at or below it rolls back."""
        return -self.upper


@dataclass(frozen=True)
class Decision:
    decision: str              # promote | rollback | keep
    reason: str                # crossed_upper | crossed_lower | truncated | insufficient_samples | continue
    llr: float
    n_new: int
    n_base: int
    mean_new: float | None
    mean_base: float | None
    diff: float | None
    std: float | None          # the pooled, shrunk standard deviation the test used
    config: SequentialConfig

    @property
    def worse(self) -> bool:
        return self.decision == ROLLBACK

    @property
    def final(self) -> bool:
        return self.decision != KEEP

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(worse=self.worse, upper=self.config.upper, lower=self.config.lower)
        return out

    def summary(self, new: str, base: str) -> str:
        if self.diff is None:
            return (f"version {new}: {self.n_new} rewarded replies, baseline {base}: {self.n_base}; "
                    f"need {self.config.min_samples} each")
        return (f"version {new} mean reward {self.mean_new:+.3f} (n={self.n_new}) vs {base} {self.mean_base:+.3f} "
                f"(n={self.n_base}), diff {self.diff:+.3f}; SPRT log-LR {self.llr:+.2f} in "
                f"[{self.config.lower:+.2f}, {self.config.upper:+.2f}] (worse = -{self.config.worse_by:g})")


def _finite(name: str, values: Sequence[float]) -> list[float]:
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"sequential test: {name} contains a non-finite reward")
    return out


def pooled_std(new: Sequence[float], base: Sequence[float], prior_weight: float) -> float:
    """sqrt of (sum of squared deviations of both samples + prior_weight * 1.0) / (n - 2 + prior_weight)."""
    ss = 0.0
    for xs in (new, base):
        m = sum(xs) / len(xs)
        ss += sum((x - m) ** 2 for x in xs)
    dof = len(new) + len(base) - 2 + prior_weight
    return math.sqrt((ss + prior_weight * 1.0) / dof) if dof > 0 else 1.0


def decide(new_rewards: Sequence[float], base_rewards: Sequence[float],
           config: SequentialConfig = SequentialConfig()) -> Decision:
    """The test on all rewards so far (a look: call it again as rewards arrive)."""
    new, base = _finite("new_rewards", new_rewards), _finite("base_rewards", base_rewards)
    n_new, n_base = len(new), len(base)
    if n_new < config.min_samples or n_base < config.min_samples:
        mean = lambda xs: sum(xs) / len(xs) if xs else None
        return Decision(KEEP, "insufficient_samples", 0.0, n_new, n_base, mean(new), mean(base), None, None,
                        config)
    m_new, m_base = sum(new) / n_new, sum(base) / n_base
    d = m_new - m_base
    s = pooled_std(new, base, config.prior_weight)
    var = max(s * s * (1 / n_new + 1 / n_base), 1e-12)
    llr = config.worse_by / var * (d + config.worse_by / 2)
    if llr >= config.upper:
        decision, reason = PROMOTE, "crossed_upper"
    elif llr <= config.lower:
        decision, reason = ROLLBACK, "crossed_lower"
    elif n_new >= config.max_samples:
        decision, reason = (PROMOTE if llr >= 0 else ROLLBACK), "truncated"
    else:
        decision, reason = KEEP, "continue"
    return Decision(decision, reason, llr, n_new, n_base, m_new, m_base, d, s, config)
