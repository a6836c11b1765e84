"""Keep a trained adapter within the KL budget by scaling its update back (TRPO's backtracking
line search) instead of rejecting the whole run.

With a learning rate that suits a few dozen samples a run can overshoot the budget, and the gate
then throws away everything it learned. The update's direction comes from all of the run's
samples; mostly its length is too long. So after training: read the KL to the parent on the
held-out prompts (the gate's own measure); while it is over kl_budget, put
parent + a x (trained - parent) into the adapter's parameters for the next a in BACKTRACK and
read again. (On LoRA factors the weight change is then a (dB A + B dA) + a^2 dB dA: between a^2
and a times the trained one, the same direction to first order.) The first a within the budget
is kept; when none is, the trained weights stay (the rejected version keeps what was trained)
and the run is rejected. (Stopping early instead, at the last weights under the budget, was tried and kept
weights from 2 of 10 Adam steps that served worse than base: KL is not monotone in the steps.)
This reads the held-out *prompts* to enforce a constraint; the held-out rewards, which the
counterfactual check decides on, are not read.
"""
from __future__ import annotations

import math

import torch

from learner.gate import ParentView

BACKTRACK = (0.75, 0.5, 0.35, 0.25, 0.125)


@torch.no_grad()
def line_search(model, parent: ParentView, measure, budget: float) -> dict:
    """Scale `model`'s adapter update back until `measure()` (KL to the parent) is within
    `budget`; returns {"alpha": the kept scale (1 = as trained; 0 = none fitted, the trained
    weights are put back), "readings": [[alpha, kl], ...], "scaled": 0 < alpha < 1}."""
    params = dict(model.named_parameters())
    trained = {n: params[n].detach().clone() for n in parent.weights}

    def within(kl: float) -> bool:
        return math.isfinite(kl) and kl <= budget

    readings = [[1.0, float(measure())]]
    if within(readings[0][1]):
        return {"alpha": 1.0, "readings": readings, "scaled": False}
    for a in BACKTRACK:
        for n, w in parent.weights.items():
            params[n].copy_(w + a * (trained[n] - w))
        readings.append([a, float(measure())])
        if within(readings[-1][1]):
            return {"alpha": a, "readings": readings, "scaled": True}
    for n, w in trained.items():
        params[n].copy_(w)
    return {"alpha": 0.0, "readings": readings, "scaled": False}
