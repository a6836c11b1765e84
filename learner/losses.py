"""Loss functions for the learner: pure torch, no I/O.

Shapes: B replies in a batch, T reply tokens (right-padded), V vocabulary entries.
Every per-token tensor comes with ``mask`` [B,T] (1 = a real reply token, 0 = padding or
prompt); masked positions never contribute to a loss or a statistic.

The default (``LossWeights()``) and why: chosen on the learning benchmark across three
populations of different taste (docs/benchmarks.md, "Learning on held-out questions"), where it was the
one objective whose held-out lift was above zero for every population, pooled over seeds.

* ``kto`` 1.0 -- KTO. With the learner's defaults (TrainConfig.kto.labels = "baseline",
  kto_balance = True) a reply is desirable when its reward is above the run's baseline and the
  two classes weigh half each, so a population that is mostly displeased still has replies to
  move towards (with TRL's sign labels and equal weights it pushed every reply down there).
* ``pg`` 0.0 -- clipped, importance-weighted policy gradient against the behavior log-probs
  recorded at generation (PPO-style ratio, dual clip). It uses the reward's size; as the only
  term it lifted two of the three populations.
* ``kl`` 0.0 -- KL penalty to the base model (the adapter switched off); the gate's KL budget
  bounds every run whatever the mix.
* ``sft`` 0.0 -- cross-entropy on the top-rated replies (the product's original recipe).
* ``dpo`` 0.0 -- DPO, for when preference pairs exist (choose, or regenerate-then-keep).

The earlier default is ``[losses] pg = 1, kl = 0.05, sft = 0.1, kto = 0`` in
REWARDLOOP_TRAIN_CONFIG (a term the table leaves out keeps the default above).

Policy-gradient, KTO and DPO return ``(loss, stats)`` where ``stats`` holds plain floats for
logging; the other terms return a scalar loss. ``total_loss`` mixes named parts by weight.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from core.config_fields import ConfigError, setting, validate

__all__ = [
    "LossWeights",
    "advantages",
    "clipped_pg_loss",
    "dpo_loss",
    "kl_penalty",
    "kto_loss",
    "sequence_logprobs",
    "sft_loss",
    "total_loss",
]

# exp() of a float32 above ~88 is inf; log-ratios this large mean the sample is useless anyway.
_MAX_LOG_RATIO = 20.0


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [B,T] over positions where ``mask`` [B,T] is set; 0 when none are."""
    mask = mask.to(values.dtype)
    # clamp: an all-padding batch gives 0 (with a grad graph), not NaN
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def sequence_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Log-probability of each target token under ``logits``.

    ``logits`` [B,T,V] must already be aligned with ``targets`` [B,T]: ``logits[:, t]`` is the
    distribution that predicted ``targets[:, t]`` (shift before calling:
    ``logits[:, :-1]`` with ``input_ids[:, 1:]``). Returns [B,T] float32, 0 where ``mask`` is 0;
    targets at masked positions may hold anything (e.g. -100 or a pad id).
    Sum over T for a sequence log-probability.
    """
    valid = mask.bool()  # [B,T]
    # any in-range id works at masked positions; their value is zeroed below
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))  # [B,T]
    logits = logits.float()  # bf16 log-softmax loses too much precision for ratios
    picked = logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)  # [B,T]
    # log p = logit - logsumexp(logits): avoids materialising a second [B,T,V] tensor
    logp = picked - torch.logsumexp(logits, dim=-1)  # [B,T]
    return logp * valid.to(logp.dtype)


def advantages(
    rewards: torch.Tensor,
    baseline: float | None = None,
    normalize: bool = True,
    eps: float = 1e-6,
    scale: float | None = None,
) -> torch.Tensor:
    """Advantages [B] = ``rewards`` [B] minus a baseline, optionally normalised (RMS).

    ``baseline`` None uses the batch mean; pass a running mean of past rewards instead when
    batches are small or one-sided (a batch of all thumbs-up then still gets a positive push).
    Normalisation divides by the root mean square of the centred values -- their population
    std when the baseline is the batch mean -- so step size does not depend on the reward
    scale. (Not the std against a fixed baseline: four good replies rewarded 0.7-0.9 have a
    std of 0.07, which would blow their advantages up to ~11.) It is skipped when B == 1 or
    the scale is below ``eps`` (dividing by ~0 would turn float noise into huge advantages).
    ``scale`` given: divide by it instead of this batch's RMS (one scale for a whole run),
    under the same ``eps`` rule, whatever B. Advantages are constants: no grad.
    """
    r = rewards.detach().float()  # [B]
    b = r.mean() if baseline is None else torch.as_tensor(float(baseline))
    adv = r - b  # [B]
    if scale is None and normalize and adv.numel() > 1:
        scale = float(adv.pow(2).mean().sqrt())
    if normalize and scale is not None and scale > eps:
        adv = adv / scale
    return adv


def clipped_pg_loss(
    new_logp: torch.Tensor,
    behavior_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps: float = 0.2,
    reduce: str = "token",
    dual_clip: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-style clipped policy-gradient loss.

    ``new_logp`` [B,T] (with grad) are the current policy's token log-probs, ``behavior_logp``
    [B,T] those recorded when the reply was generated, ``adv`` [B] one advantage per reply,
    broadcast to its tokens. Per token ``ratio = exp(new - behavior)`` and the loss is
    ``-mean_valid(min(ratio*A, clip(ratio, 1-eps, 1+eps)*A))``. At ratio 1 its gradient equals
    plain policy gradient, ``-(logp*A)`` averaged over valid tokens; beyond the clip on the
    side that would improve the objective further, the token's gradient is zero.

    ``dual_clip`` c > 1 (0 = off): for a negative advantage the objective is bounded below by
    ``c * A`` (dual-clip PPO), so a token whose ratio is far above 1 -- a stale replayed reply,
    or a bf16/fp32 log-prob gap -- cannot push the loss, and its gradient, without bound: the
    per-token importance weight is truncated at c.

    ``reduce`` "reply": average each reply's tokens first, then the replies (every reply weighs
    the same, so a short reply's tokens -- its stop token among them -- weigh more each).

    Stats: ``clip_frac`` (share of valid tokens whose gradient the clip removed),
    ``ratio_mean``, ``approx_kl`` (k3 estimate of KL(behavior || new) over valid tokens).
    """
    valid = mask.to(new_logp.dtype)  # [B,T]
    log_ratio = (new_logp - behavior_logp.detach()) * valid  # [B,T]; 0 -> ratio 1 on padding
    log_ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)  # [B,T]
    a = adv.detach().to(ratio.dtype).unsqueeze(-1)  # [B,1]
    unclipped = ratio * a  # [B,T]
    clipped = ratio.clamp(1.0 - eps, 1.0 + eps) * a  # [B,T]
    # pessimistic bound: never credit the policy for moving further than eps from behavior
    objective = torch.minimum(unclipped, clipped)  # [B,T]
    if dual_clip > 0:
        objective = torch.where(a < 0, torch.maximum(objective, dual_clip * a), objective)  # [B,T]
    if reduce == "token":
        loss = -_masked_mean(objective, valid)
    elif reduce == "reply":
        rows = valid.sum(-1)  # [B]
        per_reply = (objective * valid).sum(-1) / rows.clamp(min=1.0)  # [B]
        loss = -(per_reply * (rows > 0)).sum() / (rows > 0).sum().clamp(min=1)
    else:
        raise ValueError(f"reduce must be 'token' or 'reply', got {reduce!r}")

    with torch.no_grad():
        r = ratio.detach()
        was_clipped = ((r > 1.0 + eps) & (a > 0)) | ((r < 1.0 - eps) & (a < 0))  # [B,T]
        lr = log_ratio.detach()
        stats = {
            "clip_frac": _masked_mean(was_clipped.to(r.dtype), valid).item(),
            "ratio_mean": _masked_mean(r, valid).item(),
            "approx_kl": _masked_mean((r - 1.0) - lr, valid).item(),
        }
    return loss, stats


def kl_penalty(
    policy_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """KL(policy || reference) estimate: k3 per token, averaged over valid tokens. Scalar.

    ``policy_logp`` [B,T] (with grad), ``ref_logp`` [B,T] from the base model (the adapter
    disabled). Per token ``exp(ref - pol) - (ref - pol) - 1``: non-negative, unbiased for the
    KL under the policy's samples, lower variance than ``pol - ref``, and exactly zero when
    the two agree.
    """
    valid = mask.to(policy_logp.dtype)  # [B,T]
    d = ((ref_logp.detach() - policy_logp) * valid).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    per_token = torch.exp(d) - d - 1.0  # [B,T]; 0 on padding since d = 0 there
    return _masked_mean(per_token, valid)


def sft_loss(
    new_logp: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Token cross-entropy on the selected (top-rated) replies. Scalar.

    ``new_logp`` [B,T] token log-probs, ``mask`` [B,T], ``weights`` [B] bool (which replies
    to imitate) or float (per-reply weight). The loss is the weighted mean of ``-logp`` over
    the valid tokens of the selected rows, i.e. ``F.cross_entropy`` on those rows for bool
    weights. With nothing selected it is 0 but still part of the graph, so ``backward`` works.
    """
    w = weights.to(new_logp.dtype).unsqueeze(-1) * mask.to(new_logp.dtype)  # [B,T]
    total = w.sum()
    if not bool(total > 0):
        return (new_logp * 0.0).sum()  # keeps the graph: callers can always backward()
    return -(new_logp * w).sum() / total


def kto_loss(
    policy_seq_logp: torch.Tensor,
    ref_seq_logp: torch.Tensor,
    desirable: torch.Tensor,
    *,
    beta: float = 0.1,
    lambda_d: float = 1.0,
    lambda_u: float = 1.0,
    kl_ref: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """KTO loss (Ethayarajh et al. 2024), as TRL's ``KTOTrainer`` computes it.

    ``policy_seq_logp`` [B] and ``ref_seq_logp`` [B] are whole-reply log-probs, ``desirable``
    [B] bool (thumbs up = True). With ``logratio = policy - ref`` and ``z = kl_ref``:
    desirable rows lose ``lambda_d*(1 - sigmoid(beta*(logratio - z)))``, undesirable rows
    ``lambda_u*(1 - sigmoid(beta*(z - logratio)))``; the loss is the mean over all B.
    ``kl_ref`` is the reference point z (an estimate of KL(policy || ref), e.g. from
    mismatched prompt/reply pairs); like TRL it is detached and clamped at 0, so it shifts the
    loss without being trained. Stats: mean ``chosen_reward`` / ``rejected_reward``
    (``beta*logratio``) and ``kl_ref``.
    """
    want = desirable.bool()  # [B]
    z = torch.as_tensor(kl_ref, dtype=policy_seq_logp.dtype).detach().clamp(min=0.0)
    logratio = policy_seq_logp - ref_seq_logp.detach()  # [B]
    chosen = lambda_d * (1.0 - torch.sigmoid(beta * (logratio - z)))  # [B]
    rejected = lambda_u * (1.0 - torch.sigmoid(beta * (z - logratio)))  # [B]
    losses = torch.where(want, chosen, rejected)  # [B]
    loss = losses.sum() / max(losses.numel(), 1)

    with torch.no_grad():
        rewards = beta * logratio.detach()  # [B]
        stats = {
            "chosen_reward": rewards[want].mean().item() if bool(want.any()) else 0.0,
            "rejected_reward": rewards[~want].mean().item() if bool((~want).any()) else 0.0,
            "kl_ref": z.item(),
        }
    return loss, stats


def dpo_loss(
    pol_chosen: torch.Tensor,
    pol_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO loss (Rafailov et al. 2023) on preference pairs.

    All inputs [B] whole-reply log-probs of the chosen / rejected reply under the policy and
    the reference. Loss ``-logsigmoid(beta*((pc - rc) - (pr - rr))).mean()``. Stats:
    ``reward_accuracy`` (share of pairs whose implicit reward ``beta*(pol - ref)`` ranks the
    chosen reply higher), mean ``chosen_reward``, ``rejected_reward`` and ``reward_margin``.
    """
    chosen_logratio = pol_chosen - ref_chosen.detach()  # [B]
    rejected_logratio = pol_rejected - ref_rejected.detach()  # [B]
    logits = beta * (chosen_logratio - rejected_logratio)  # [B]
    loss = -F.logsigmoid(logits).mean()

    with torch.no_grad():
        rc = beta * chosen_logratio.detach()  # [B]
        rr = beta * rejected_logratio.detach()  # [B]
        stats = {
            "reward_accuracy": (rc > rr).float().mean().item(),
            "chosen_reward": rc.mean().item(),
            "rejected_reward": rr.mean().item(),
            "reward_margin": (rc - rr).mean().item(),
        }
    return loss, stats


@dataclass(frozen=True)
class LossWeights:
    """How much each loss term counts in ``total_loss``. 0 switches a term off."""

    pg: float = setting(0.0, "Clipped, importance-weighted policy gradient on every rewarded reply.", ge=0)
    kl: float = setting(0.0, "KL penalty to the base model; keeps the adapter near base so a few users cannot "
                             "move it far.", ge=0)
    sft: float = setting(0.0, "Cross-entropy on top-rated replies: cheap, stable supervised signal.", ge=0)
    kto: float = setting(1.0, "KTO: desirable replies up, undesirable down, against the base model (the default; "
                              "labels and class weights: TrainConfig.kto.labels, kto.balance).", ge=0)
    dpo: float = setting(0.0, "DPO on preference pairs (choose, regenerate-then-keep).", ge=0)

    def __post_init__(self) -> None:
        validate(self)
        if all(getattr(self, f.name) == 0 for f in fields(self)):
            raise ConfigError("LossWeights are all 0: nothing would be trained; set kto=1.0 "
                              "(or another term) above 0")


def total_loss(parts: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """Weighted sum of the named scalar losses in ``parts`` (keys: fields of LossWeights).

    Terms whose weight is 0 are skipped, so they need not be computed and a NaN in an unused
    term cannot poison the sum. A term with a positive weight must be present: a silently
    missing KL penalty would let the adapter drift without anyone noticing.
    """
    names = {f.name for f in fields(weights)}
    unknown = sorted(set(parts) - names)
    if unknown:
        raise KeyError(f"unknown loss part(s) {unknown}; expected some of {sorted(names)}")
    missing = sorted(n for n in names if getattr(weights, n) > 0 and n not in parts)
    if missing:
        raise KeyError(
            f"loss part(s) {missing} have a positive weight but were not computed; "
            f"compute them or set their weight to 0"
        )
    shaped = sorted(n for n, t in parts.items() if t.dim() != 0)
    if shaped:
        raise ValueError(f"loss part(s) {shaped} are not scalars; reduce them (e.g. .mean()) first")
    terms = [getattr(weights, n) * parts[n] for n in sorted(parts) if getattr(weights, n) > 0]
    return torch.stack(terms).sum()
