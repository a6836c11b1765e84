"""The evaluation gate: a trained adapter is published only if

1. every adapter weight is finite;
2. its mean per-token KL to the parent (the serving version it was trained from) on held-out
   logged prompts is within the budget;
3. its counterfactual reward (SNIPS over held-out logged replies, weighted by the behavior
   log-probs recorded at generation) is no worse than the parent's by more than a margin.

`snapshot_parent` runs before training (the model then *is* the parent); `evaluate` after.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from learner import counterfactual
from learner.config import TrainConfig
from learner.dataset import Sample
from learner.train import collate, reply_logits, sampling_logprobs


@dataclass
class GateResult:
    passed: bool
    reason: str  # why it failed, or "passed"
    stats: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class ParentView:
    """What the gate needs to know about the parent: its adapter weights (small: LoRA only,
    swapped in to recompute its distributions) and its held-out reply log-probs."""
    weights: dict[str, torch.Tensor]  # trainable parameter name -> copy of the parent's values
    seq_sampling_logp: list[float]  # [N] reply log-prob under its own sampling distribution


def _chunks(samples: list[Sample], size: int):
    for i in range(0, len(samples), size):
        yield samples[i:i + size]


@torch.no_grad()
def _seq_sampling_logp(logits: torch.Tensor, batch) -> list[float]:
    return sampling_logprobs(logits, batch).sum(-1).tolist()  # [B]


@contextlib.contextmanager
def parent_weights(model, parent: ParentView):
    """Temporarily put the parent's adapter weights back into `model`."""
    params = dict(model.named_parameters())
    current = {n: params[n].detach().clone() for n in parent.weights}
    try:
        for n, w in parent.weights.items():
            params[n].data.copy_(w)
        yield
    finally:
        for n, w in current.items():
            params[n].data.copy_(w)


@torch.no_grad()
def snapshot_parent(model, holdout: list[Sample], pad_id: int, device, batch_size: int = 8) -> ParentView:
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    view = ParentView(weights=weights, seq_sampling_logp=[])
    for chunk in _chunks(holdout, batch_size):
        batch = collate(chunk, pad_id, device)
        view.seq_sampling_logp += _seq_sampling_logp(reply_logits(model, batch), batch)
    return view


def nonfinite_weights(model) -> list[str]:
    """Names of trainable (adapter) tensors holding NaN or inf."""
    return [n for n, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]


@torch.no_grad()
def kl_to_parent(model, holdout: list[Sample], parent: ParentView, pad_id: int, device,
                 batch_size: int = 8) -> float:
    """Mean over held-out reply tokens of KL(new || parent) = sum_v p_new (log p_new - log p_parent)."""
    total, count = 0.0, 0.0
    for chunk in _chunks(holdout, batch_size):
        batch = collate(chunk, pad_id, device)
        new_logp = torch.log_softmax(reply_logits(model, batch).float(), -1)  # [B,T,V]
        with parent_weights(model, parent):
            parent_logp = torch.log_softmax(reply_logits(model, batch).float(), -1)  # [B,T,V]
        kl = (new_logp.exp() * (new_logp - parent_logp)).sum(-1)  # [B,T]
        total += float((kl * batch.mask).sum())
        count += float(batch.mask.sum())
    return total / count if count else 0.0


@torch.no_grad()
def evaluate(model, holdout: list[Sample], parent: ParentView, cfg: TrainConfig, pad_id: int,
             device, batch_size: int = 8) -> GateResult:
    bad = nonfinite_weights(model)
    if bad:
        return GateResult(False, f"non-finite adapter weights in {len(bad)} tensor(s), e.g. {bad[0]}",
                          {"nonfinite_tensors": len(bad)})
    result = GateResult(True, "passed")
    if not holdout:
        result.notes.append("no held-out replies: KL and counterfactual checks skipped")
        return result

    kl = kl_to_parent(model, holdout, parent, pad_id, device, batch_size)
    result.stats["kl_to_parent"] = kl
    if not math.isfinite(kl) or kl > cfg.kl_budget:
        result.passed, result.reason = False, f"KL to parent {kl:.4g} per token is over the budget {cfg.kl_budget:g}"
        return result

    # counterfactual: only sampled replies have a behavior probability to weight by
    idx = [i for i, s in enumerate(holdout) if not s.greedy]
    if not idx:
        result.notes.append("held-out replies are all greedy: counterfactual check skipped")
        return result
    new_seq: list[float] = []
    for chunk in _chunks(holdout, batch_size):
        batch = collate(chunk, pad_id, device)
        new_seq += _seq_sampling_logp(reply_logits(model, batch), batch)
    rewards = [holdout[i].reward for i in idx]
    behavior = [sum(holdout[i].behavior_logp) for i in idx]
    new = counterfactual.estimate(rewards, [new_seq[i] for i in idx], behavior, min_ess=cfg.cf_min_ess)
    old = counterfactual.estimate(rewards, [parent.seq_sampling_logp[i] for i in idx], behavior,
                                  min_ess=cfg.cf_min_ess)
    result.stats.update(cf_new_snips=new.snips, cf_parent_snips=old.snips, cf_new_ess=new.ess,
                        cf_parent_ess=old.ess, cf_n=new.n, cf_logged_mean=new.logged_mean,
                        cf_new_ci=list(new.snips_ci))
    if new.warning:
        result.notes.append(new.warning)
        if cfg.cf_require_ess:
            result.passed, result.reason = False, f"counterfactual estimate unreliable: {new.warning}"
            return result
    if math.isfinite(new.snips) and math.isfinite(old.snips) and new.snips < old.snips - cfg.cf_margin:
        result.passed = False
        result.reason = (f"counterfactual reward {new.snips:.3f} is below the serving version's {old.snips:.3f} "
                         f"by more than the margin {cfg.cf_margin:g}")
    return result
