"""The evaluation gate: a trained adapter is published only if

1. every adapter weight is finite;
2. its mean per-token KL to the parent (the serving version it was trained from) on held-out
   logged prompts is within the budget;
3. its counterfactual reward on held-out logged replies is no worse than the parent's by more
   than a margin: doubly robust when a reward model exists (its score of a reply each adapter
   gives to the held-out prompt, corrected by the importance-weighted residuals of the logged
   replies), else SNIPS weighted by the behavior log-probs recorded at generation.

Evidence, not noise, decides: below the effective-sample-size floor (cf_min_ess) the gate does
not reject on the counterfactual estimate; the version goes out as a *canary* (result.canary)
and the live per-version comparison with automatic rollback (worker/ops) decides. Why is
recorded in the manifest.

`snapshot_parent` runs before training (the model then *is* the parent); `evaluate` after.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from learner import counterfactual
from learner.config import TrainConfig
from learner.samples import Sample
from learner.train import collate, reply_logits, sampling_logprobs


@dataclass
class GateResult:
    passed: bool
    reason: str  # why it failed, or "passed"
    canary: bool = False  # publish as canary whatever the publish mode: too little evidence either way
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
def snapshot_parent(policy, holdout: list[Sample], batch_size: int = 8) -> ParentView:
    """Before training: the parent's adapter weights and its held-out reply log-probs."""
    model = policy.model
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    view = ParentView(weights=weights, seq_sampling_logp=[])
    for chunk in _chunks(holdout, batch_size):
        batch = collate(chunk, policy.pad_id, policy.device)
        view.seq_sampling_logp += _seq_sampling_logp(reply_logits(model, batch), batch)
    return view


def nonfinite_weights(model) -> list[str]:
    """Names of trainable (adapter) tensors holding NaN or inf."""
    return [n for n, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]


@torch.no_grad()
def kl_to_parent(policy, holdout: list[Sample], parent: ParentView, batch_size: int = 8) -> float:
    """Mean over held-out reply tokens of KL(new || parent) = sum_v p_new (log p_new - log p_parent)."""
    model = policy.model
    total, count = 0.0, 0.0
    for chunk in _chunks(holdout, batch_size):
        batch = collate(chunk, policy.pad_id, policy.device)
        new_logp = torch.log_softmax(reply_logits(model, batch).float(), -1)  # [B,T,V]
        with parent_weights(model, parent):
            parent_logp = torch.log_softmax(reply_logits(model, batch).float(), -1)  # [B,T,V]
        kl = (new_logp.exp() * (new_logp - parent_logp)).sum(-1)  # [B,T]
        total += float((kl * batch.mask).sum())
        count += float(batch.mask.sum())
    return total / count if count else 0.0


@torch.no_grad()
def _model_values(policy, holdout: list[Sample], parent: ParentView, reward_model, max_new_tokens: int,
                  seed: int) -> tuple[list[float], list[float], list[float]]:
    """Reward-model scores: of each logged reply, of a reply the new adapter gives, of one the
    parent gives (same prompt, same sampling params, seeded)."""
    from learner.reward_model import extract_features
    model, pad_id, device = policy.model, policy.pad_id, policy.device
    logged = [(s.prompt_ids, s.reply_ids) for s in holdout]

    def replies() -> list[tuple[list[int], list[int]]]:
        out = []
        for i, s in enumerate(holdout):
            torch.manual_seed(seed + i)
            ids = torch.tensor([s.prompt_ids], device=device)
            kw = dict(do_sample=True, temperature=s.params.temperature, top_p=s.params.top_p) if not s.greedy \
                else dict(do_sample=False)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=pad_id,
                                 max_new_tokens=min(max_new_tokens, max(len(s.reply_ids), 1)), **kw)
            out.append((s.prompt_ids, gen[0, len(s.prompt_ids):].tolist()))
        return out

    new = replies()
    with parent_weights(model, parent):
        old = replies()
    score = lambda pairs: reward_model.reward(extract_features(model, pairs, device)).tolist()
    return score(logged), score(new), score(old)


@torch.no_grad()
def evaluate(policy, holdout: list[Sample], parent: ParentView, cfg: TrainConfig, *, batch_size: int = 8,
             reward_model=None) -> GateResult:
    model = policy.model
    bad = nonfinite_weights(model)
    if bad:
        return GateResult(False, f"non-finite adapter weights in {len(bad)} tensor(s), e.g. {bad[0]}",
                          {"nonfinite_tensors": len(bad)})
    result = GateResult(True, "passed")
    if not holdout:
        result.notes.append("no held-out replies: KL and counterfactual checks skipped")
        return result

    kl = kl_to_parent(policy, holdout, parent, batch_size)
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
        batch = collate(chunk, policy.pad_id, policy.device)
        new_seq += _seq_sampling_logp(reply_logits(model, batch), batch)
    rewards = [holdout[i].reward for i in idx]
    behavior = [sum(holdout[i].behavior_logp) for i in idx]
    new = counterfactual.estimate(rewards, [new_seq[i] for i in idx], behavior, min_ess=cfg.gate.cf_min_ess)
    old = counterfactual.estimate(rewards, [parent.seq_sampling_logp[i] for i in idx], behavior,
                                  min_ess=cfg.gate.cf_min_ess)
    result.stats.update(cf_new_snips=new.snips, cf_parent_snips=old.snips, cf_new_ess=new.ess,
                        cf_parent_ess=old.ess, cf_n=new.n, cf_logged_mean=new.logged_mean,
                        cf_new_ci=list(new.snips_ci))
    new_value, old_value, method = new.snips, old.snips, "snips"
    if reward_model is not None:
        sub = [holdout[i] for i in idx]
        q_logged, q_new, q_old = _model_values(policy, sub, parent, reward_model, cfg.max_reply_tokens, cfg.seed)
        w_new = counterfactual.importance_weights([new_seq[i] for i in idx], behavior)
        w_old = counterfactual.importance_weights([parent.seq_sampling_logp[i] for i in idx], behavior)
        new_value, new_ci = counterfactual.doubly_robust(rewards, w_new, q_logged, q_new, seed=cfg.seed)
        old_value, _ = counterfactual.doubly_robust(rewards, w_old, q_logged, q_old, seed=cfg.seed)
        method = "doubly_robust"
        result.stats.update(cf_new_dr=new_value, cf_parent_dr=old_value, cf_new_dr_ci=list(new_ci))
    result.stats["cf_method"] = method
    passed, canary, why = decide(new_value, old_value, new.ess, cfg, method)
    if new.warning:
        result.notes.append(new.warning)
    result.passed, result.canary = passed, canary
    if canary:
        result.notes.append(why)
    elif not passed:
        result.reason = why
    return result


def decide(new_value: float, old_value: float, ess: float, cfg: TrainConfig, method: str = "snips"
           ) -> tuple[bool, bool, str]:
    """(passed, canary, why) from the two estimates and the effective sample size. Pure: the
    gate and its simulation (bench/gate_sim.py) share it."""
    if ess < cfg.gate.cf_min_ess:
        if cfg.gate.cf_require_ess:
            return False, False, f"counterfactual estimate unreliable: effective sample size {ess:.1f} < {cfg.gate.cf_min_ess:g}"
        # too little evidence to reject (or to trust a pass): let the live comparison decide
        return True, True, (f"effective sample size {ess:.1f} is below the floor {cfg.gate.cf_min_ess:g}: not judged on "
                            "the counterfactual estimate; published as canary, the live per-version comparison "
                            "(and automatic rollback) decides")
    if math.isfinite(new_value) and math.isfinite(old_value) and new_value < old_value - cfg.gate.cf_margin:
        return False, False, (f"counterfactual reward ({method}) {new_value:.3f} is below the serving version's "
                              f"{old_value:.3f} by more than the margin {cfg.gate.cf_margin:g}")
    return True, False, "passed"
