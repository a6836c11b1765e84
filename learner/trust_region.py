"""The step size of a run from a KL target: how many steps, and how far the update goes.

A constant learning rate moves a run on 20 samples and one on 400 by very different amounts
(the issue that made the defaults learn nothing measurable: 0.003 nats per token a run). So:

1. `schedule`: the number of optimizer steps follows from the samples -- at least
   StepSettings.min_steps (several passes over a small run, at most max_epochs), one pass over a
   large one.
2. While training, `KlController` reads the KL to the parent a few times; when it is already
   over twice the target, the learning rate is halved for the rest of the run (Adam's first
   steps overshoot; this bounds how far past the target the trained weights end up); when it
   lags far behind, the rate is doubled (a model that moves slowly still gets there).
3. After training, `fit_scale` puts parent + a x (trained - parent) into the adapter for the
   scale a whose KL lands in LAND x target (0.7-1.15): a search on a, using that KL grows
   about as a^2 near the parent (so a' = a sqrt(target / KL), kept inside the bracket found
   so far). An update that stays below the target is extended up to StepSettings.max_scale.
   (On LoRA factors the weight change is a (dB A + B dA) + a^2 dB dA: the same direction to
   first order.)

Earlier attempts, for the record: stopping training at the last step under the budget kept
weights of 2 of 10 Adam steps that served worse than base (KL is not monotone in the steps);
a backtracking-only line search to a budget (no target, no extension) left runs wherever the
learning rate put them. The KL is read on held-out logged *prompts* (their logged replies,
teacher-forced): the held-out rewards, which the counterfactual check decides on, are not read.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from learner.config import LAND, StepSettings

CONTROL_CHECKS = 4        # KL readings during training (at evenly spaced steps)
OVERSHOOT = 2.0           # a reading over OVERSHOOT x target halves the learning rate
MAX_BOOST = 8.0           # a lagging run's learning rate grows to at most this x its start
MAX_READINGS = 8          # KL readings the scale search may take


def schedule(n_samples: int, minibatch_size: int, step: StepSettings) -> tuple[int, int]:
    """(epochs, optimizer steps) for a run on n_samples. Pure."""
    batches = max(1, math.ceil(n_samples / minibatch_size))
    epochs = min(step.max_epochs, max(1, math.ceil(step.min_steps / batches)))
    return epochs, epochs * batches


class KlController:
    """Reads the KL at CONTROL_CHECKS evenly spaced steps and adjusts the learning rate for the
    rest of the run: halved while the KL is over OVERSHOOT x target; doubled (up to MAX_BOOST x
    the starting rate) while it lags far behind the path to the target (KL grows about as the
    square of the distance travelled, so at a share f of the steps it should be near
    f^2 x target; below a quarter of that counts as lagging). `readings`: [[step, kl, lr after]]."""

    def __init__(self, measure: Callable[[], float] | None, target: float, total_steps: int):
        self.measure, self.target, self.total = measure, target, total_steps
        every = max(1, total_steps // CONTROL_CHECKS)
        self.at = {s for s in range(every, total_steps, every)} if measure else set()
        self.readings: list[list[float]] = []
        self.start_lr: float | None = None

    def after_step(self, step: int, opt: torch.optim.Optimizer) -> None:
        if step not in self.at:
            return
        lr = opt.param_groups[0]["lr"]
        self.start_lr = self.start_lr or lr
        kl = float(self.measure())
        expected = self.target * (step / self.total) ** 2
        if not math.isfinite(kl) or kl > OVERSHOOT * self.target:
            lr *= 0.5
        elif kl < expected / 4 and lr * 2 <= MAX_BOOST * self.start_lr:
            lr *= 2
        for group in opt.param_groups:
            group["lr"] = lr
        self.readings.append([step, kl, lr])


def _next_scale(a: float, kl: float, target: float, lo: float, hi: float | None) -> float:
    """Next scale to read: KL ~ a^2 near the parent, kept strictly inside the bracket (lo, hi)."""
    guess = a * math.sqrt(target / kl) if math.isfinite(kl) and kl > 0 else a / 2
    top = hi if hi is not None else math.inf
    if not lo < guess < top:
        guess = (lo + top) / 2 if hi is not None else a * 2
    return guess


@torch.no_grad()
def fit_scale(model, parent_weights: dict[str, torch.Tensor], measure: Callable[[], float], target: float,
              max_scale: float) -> dict:
    """Scale `model`'s adapter update so `measure()` (KL to the parent) lands in LAND x target.
    Returns {"alpha": the kept scale, "readings": [[alpha, kl], ...], "landed": whether the kept
    KL is in the band, "kl": the kept KL}. The kept weights are left in the model."""
    params = dict(model.named_parameters())
    trained = {n: params[n].detach().clone() for n in parent_weights}
    low, high = LAND[0] * target, LAND[1] * target

    def put(a: float) -> float:
        for n, w in parent_weights.items():
            params[n].copy_(w + a * (trained[n] - w))
        return float(measure())

    readings = [[1.0, float(measure())]]
    lo, hi = 0.0, None            # scales known to read below the band / above it
    a, kl = readings[0]
    while not (math.isfinite(kl) and low <= kl <= high) and len(readings) < MAX_READINGS:
        if math.isfinite(kl) and kl < low:
            lo = a
            if a >= max_scale:
                break
        else:
            hi = a
        a = min(max_scale, _next_scale(a, kl, target, lo, hi))
        kl = put(a)
        readings.append([a, kl])
    best = _best(readings, low, high)
    if best[0] != readings[-1][0]:
        put(best[0])
    return {"alpha": best[0], "kl": best[1], "readings": readings,
            "landed": math.isfinite(best[1]) and low <= best[1] <= high}


def _best(readings: list[list[float]], low: float, high: float) -> list[float]:
    """A reading in the band; else the largest scale at most `high`; else the smallest scale."""
    inside = [r for r in readings if math.isfinite(r[1]) and low <= r[1] <= high]
    if inside:
        return inside[-1]
    under = [r for r in readings if math.isfinite(r[1]) and r[1] <= high]
    if under:
        return max(under, key=lambda r: r[0])
    return min(readings, key=lambda r: r[0])
