"""One LoRA update on logged, rewarded replies: readable top to bottom.

    model   = base model + LoRA (continued from the stable adapter when there is one)
    ref     = the same model with the adapter disabled (the base model, for the KL penalty)
    for each epoch, for each mini-batch of replies:
        logp      token log-probs at temperature 1            (SFT, KL, KTO, DPO)
        samp_logp token log-probs under the SAME temperature/top-p the reply was sampled with,
                  comparable to the behavior log-probs recorded at generation (PG ratio)
        loss      = pg + kl + sft (+ kto + dpo), weights from TrainConfig.losses
        AdamW step with gradient clipping

Greedy replies (temperature 0) were drawn from a point mass: their behavior log-prob is 0 and no
importance ratio exists, so they are left out of the policy gradient and still count for the
SFT, KL and KTO terms.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from core.sampling import SamplingParams, processed_logprobs
from learner.config import TrainConfig
from learner.losses import (
    advantages,
    clipped_pg_loss,
    dpo_loss,
    kl_penalty,
    kto_loss,
    sequence_logprobs,
    sft_loss,
    total_loss,
)
from learner.samples import Dataset, Pair, Sample

log = logging.getLogger(__name__)

# log-prob given to a logged token that now falls outside the top-p nucleus: the new policy
# would never sample it; a finite floor keeps ratios and sums finite (and has no gradient).
OUTSIDE_NUCLEUS_LOGP = -30.0


def wrap_with_lora(base: torch.nn.Module, cfg: TrainConfig, parent_dir: Path | None):
    """PeftModel with trainable LoRA weights: the parent adapter's, or a fresh one (for callers
    without a Policy, e.g. the benches)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    torch.manual_seed(cfg.seed)  # fresh LoRA init (A random, B zero) is reproducible
    if parent_dir is not None:
        return PeftModel.from_pretrained(base, str(parent_dir), is_trainable=True)
    lora = LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B,L] prompts left-padded to P, replies right-padded to T; L = P + T
    attention_mask: torch.Tensor  # [B,L]
    position_ids: torch.Tensor  # [B,L] counting from each row's first real token
    targets: torch.Tensor  # [B,T] reply token ids (pad where mask is 0)
    mask: torch.Tensor  # [B,T] 1 on real reply tokens
    behavior: torch.Tensor  # [B,T] recorded behavior log-probs (0 on padding)
    rewards: torch.Tensor  # [B]
    params: list[SamplingParams]  # [B] sampling params each reply was drawn with
    prompt_len: int  # P


def collate(samples: list[Sample], pad_id: int, device: torch.device) -> Batch:
    """Left-pad prompts so every reply starts at column P: reply logits are one slice."""
    P = max(len(s.prompt_ids) for s in samples)
    T = max(len(s.reply_ids) for s in samples)
    B = len(samples)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.float32)
    behavior = torch.zeros((B, T), dtype=torch.float32)
    for b, s in enumerate(samples):
        p, t = len(s.prompt_ids), len(s.reply_ids)
        ids[b, P - p:P] = torch.tensor(s.prompt_ids)
        ids[b, P:P + t] = torch.tensor(s.reply_ids)
        attn[b, P - p:P + t] = 1
        mask[b, :t] = 1
        behavior[b, :t] = torch.tensor(s.behavior_logp, dtype=torch.float32)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)  # [B,L]
    return Batch(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device),
                 targets=ids[:, P:].to(device), mask=mask.to(device), behavior=behavior.to(device),
                 rewards=torch.tensor([s.reward for s in samples], dtype=torch.float32, device=device),
                 params=[s.params for s in samples], prompt_len=P)


def reply_logits(model, batch: Batch) -> torch.Tensor:
    """[B,T,V] logits; position t predicts reply token t."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    P, T = batch.prompt_len, batch.targets.shape[1]
    return out.logits[:, P - 1:P - 1 + T]


def nucleus_keep(logp: torch.Tensor, top_p: float, k: int = 256) -> torch.Tensor:
    """[N,V] bool: which tokens the top-p nucleus of `logp` [N,V] keeps.

    Same rule as service.sampling.processed_logprobs (keep a token when the mass of the tokens
    ranked above it is below top_p), without sorting the whole vocabulary: a top-k usually
    holds the nucleus of a trained model; rows where it does not (flat distributions) fall
    back to processed_logprobs' full sort.
    """
    k = min(k, logp.shape[-1])
    top_lp, top_idx = logp.topk(k, dim=-1)  # [N,k] sorted, largest first
    probs = top_lp.exp()
    keep_sorted = (probs.cumsum(-1) - probs) < top_p  # [N,k]
    keep = torch.zeros_like(logp, dtype=torch.bool).scatter(-1, top_idx, keep_sorted)  # [N,V]
    spill = keep_sorted[:, -1] if k < logp.shape[-1] else torch.zeros_like(keep_sorted[:, -1])  # [N]
    if bool(spill.any()):  # the nucleus goes past the top-k: sort those rows
        exact = processed_logprobs(logp[spill], SamplingParams(temperature=1.0, top_p=top_p))
        keep[spill] = torch.isfinite(exact)
    return keep


def sampling_logprobs(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[B,T] log-probs of the reply tokens under each reply's own sampling distribution.

    Same semantics as service.sampling.processed_logprobs (temperature, then the top-p nucleus
    renormalised), but differentiable: nucleus membership is a hard choice (no gradient), the
    log-softmax renormalised over the nucleus carries the gradient. Rows sharing sampling
    params are processed together. Greedy rows are 0 (they take no part in the ratio).
    """
    out = torch.zeros_like(batch.behavior)  # [B,T]
    groups: dict[tuple[float, float], list[int]] = {}
    for b, p in enumerate(batch.params):
        if not p.greedy:
            groups.setdefault((p.temperature, p.top_p), []).append(b)
    for (temperature, top_p), rows in groups.items():
        idx = torch.tensor(rows, device=logits.device)
        lp = torch.log_softmax(logits[idx].float() / temperature, dim=-1)  # [G,T,V]
        tgt = batch.targets[idx].unsqueeze(-1)  # [G,T,1]
        inside = torch.ones_like(batch.mask[idx], dtype=torch.bool)  # [G,T]
        if top_p < 1.0:
            G, T, V = lp.shape
            with torch.no_grad():
                keep = nucleus_keep(lp.detach().reshape(G * T, V), top_p).reshape(G, T, V)
            lp = lp - torch.logsumexp(lp.masked_fill(~keep, float("-inf")), dim=-1, keepdim=True)
            inside = keep.gather(-1, tgt).squeeze(-1)  # [G,T]
        tok = lp.gather(-1, tgt).squeeze(-1)  # [G,T]
        tok = torch.where(inside, tok, torch.full_like(tok, OUTSIDE_NUCLEUS_LOGP))
        out = out.index_put((idx,), tok * batch.mask[idx])
    return out  # [B,T]


def _dpo_part(policy, pairs: list[Pair], beta: float) -> tuple[torch.Tensor, dict]:
    """DPO on a mini-batch of pairs: chosen rows first, then rejected rows, in one forward."""
    model = policy.model
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], policy.pad_id, policy.device)
    with torch.no_grad(), model.disable_adapter():
        ref = sequence_logprobs(reply_logits(model, batch), batch.targets, batch.mask).sum(-1)  # [2K]
    pol = sequence_logprobs(reply_logits(model, batch), batch.targets, batch.mask).sum(-1)  # [2K]
    k = len(pairs)
    return dpo_loss(pol[:k], pol[k:], ref[:k], ref[k:], beta=beta)


def pg_baseline(cfg: TrainConfig, rewards: list[float], lineage: tuple[float, float] | None) -> tuple[float, dict]:
    """The run's policy-gradient baseline, and the lineage's running reward mean to record.

    lineage: (mean reward, effective sample count) of the runs that trained the parent
    adapter, None for a fresh one. One baseline for the whole run, so a mini-batch of only
    good replies is not centred on itself."""
    prior_mean, prior_n = lineage or (0.0, 0.0)
    prior_n = min(prior_n, cfg.pg.baseline_window)
    n = prior_n + len(rewards)
    running = (prior_mean * prior_n + sum(rewards)) / n if n else 0.0
    baseline = {"batch": sum(rewards) / max(len(rewards), 1), "running": running, "zero": 0.0}[cfg.pg.baseline]
    return baseline, {"lineage_reward_mean": running, "lineage_reward_count": n}


def kto_labelling(cfg: TrainConfig, rewards: list[float], baseline: float) -> tuple[float, tuple[float, float]]:
    """KTO's label cut (a reply is desirable when its reward is above it) and the (desirable,
    undesirable) weights, for the whole run: with kto_balance each class weighs half the run."""
    cut = baseline if cfg.kto.labels == "baseline" else 0.0
    n_d = sum(r > cut for r in rewards)
    n_u = len(rewards) - n_d
    if not cfg.kto.balance or n_d == 0 or n_u == 0:
        return cut, (1.0, 1.0)
    return cut, (len(rewards) / (2 * n_d), len(rewards) / (2 * n_u))


@dataclass
class StepHooks:
    """What a run does around each optimizer step (all optional)."""
    should_stop: Callable[[], bool] | None = None   # before a step: True ends training (the lock is lost)
    pause: Callable[[], None] | None = None          # before a step: may block while chat is busy
    after_step: Callable[[int, torch.optim.Optimizer], None] | None = None   # e.g. the KL controller


@dataclass
class RunScales:
    """Per-run constants of the objective: one baseline, one advantage scale and one KTO cut for
    the whole run, so a mini-batch of only good replies is not centred on itself."""
    baseline: float
    adv_rms: float
    kto_cut: float
    kto_weights: tuple[float, float]

    @classmethod
    def of(cls, cfg: TrainConfig, rewards: list[float], lineage) -> tuple[RunScales, dict]:
        baseline, running = pg_baseline(cfg, rewards, lineage)
        rms = math.sqrt(sum((r - baseline) ** 2 for r in rewards) / len(rewards))
        cut, weights = kto_labelling(cfg, rewards, baseline)
        return cls(baseline, rms, cut, weights), running


def step_parts(policy, batch: Batch, cfg: TrainConfig, scales: RunScales, pairs: list[Pair]
               ) -> tuple[dict[str, torch.Tensor], dict]:
    """The loss terms of one mini-batch (weights from cfg.losses) and their statistics."""
    model, w = policy.model, cfg.losses
    ref_logp = None   # reference: the base model, i.e. this model with the adapter switched off (KL, KTO)
    if w.kl > 0 or w.kto > 0:
        with torch.no_grad(), model.disable_adapter():
            ref_logp = sequence_logprobs(reply_logits(model, batch), batch.targets, batch.mask)  # [B,T]
    logits = reply_logits(model, batch)  # [B,T,V]
    logp = sequence_logprobs(logits, batch.targets, batch.mask)  # [B,T] temperature 1
    parts, stats = {}, {}
    if w.pg > 0:
        # importance ratio against the recorded behavior log-probs; greedy rows masked out
        samp_logp = sampling_logprobs(logits, batch)  # [B,T]
        sampled = torch.tensor([not p.greedy for p in batch.params], device=policy.device)  # [B]
        adv = advantages(batch.rewards, baseline=scales.baseline,
                         scale=scales.adv_rms if cfg.pg.adv_scale == "run" else None)  # [B]
        parts["pg"], pg_stats = clipped_pg_loss(samp_logp, batch.behavior, adv, batch.mask * sampled.unsqueeze(-1),
                                                eps=cfg.pg.clip_eps, reduce=cfg.pg.reduce,
                                                dual_clip=cfg.pg.ratio_cap)
        stats.update(pg_stats)
    if w.kl > 0:
        parts["kl"] = kl_penalty(logp, ref_logp, batch.mask)
    if w.sft > 0:
        parts["sft"] = sft_loss(logp, batch.mask, batch.rewards >= cfg.sft.threshold)
    if w.kto > 0:
        parts["kto"], kto_stats = kto_loss(logp.sum(-1), ref_logp.sum(-1), batch.rewards > scales.kto_cut,
                                           beta=cfg.kto.beta, lambda_d=scales.kto_weights[0],
                                           lambda_u=scales.kto_weights[1])
        stats.update({f"kto_{k}": v for k, v in kto_stats.items()})
    if w.dpo > 0:
        if pairs:
            parts["dpo"], dpo_stats = _dpo_part(policy, pairs, cfg.dpo.beta)
            stats.update({f"dpo_{k}": v for k, v in dpo_stats.items()})
        else:
            parts["dpo"] = (logp * 0.0).sum()  # no pairs this run: the term is 0
    return parts, stats


def _pairs_for(data: Dataset, i: int, k: int) -> list[Pair]:
    """The i-th mini-batch's share of the preference pairs (cycled)."""
    return [data.pairs[(i * k + j) % len(data.pairs)] for j in range(min(k, len(data.pairs)))] if data.pairs else []


def train(policy, data: Dataset, cfg: TrainConfig, *, progress: bool = True,
          lineage: tuple[float, float] | None = None, hooks: StepHooks | None = None) -> dict:
    """Train the LoRA weights of `policy.model` (a PeftModel) in place on data.train; return stats.
    The number of steps follows from the samples (trust_region.schedule). lineage: the parent's
    running reward mean and count (see pg.baseline). hooks.should_stop: when it answers True (the
    run lost its lock) training ends at once with stats["stopped"] = True."""
    from learner.trust_region import schedule
    hooks = hooks or StepHooks()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=cfg.step.lr,
                            weight_decay=cfg.weight_decay)
    scales, running = RunScales.of(cfg, [s.reward for s in data.train], lineage)
    epochs, total = schedule(len(data.train), cfg.minibatch_size, cfg.step)
    n_batches = total // epochs
    stats: dict = {"steps": 0, "epochs": epochs, "planned_steps": total, "baseline": scales.baseline,
                   "run_adv_rms": scales.adv_rms, **running, "first": None, "last": None, "stopped": False}
    step_times: list[float] = []
    policy.model.train()
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress, mininterval=0.5)
    for epoch in range(epochs):
        order = torch.randperm(len(data.train), generator=gen).tolist()
        for i in range(n_batches):
            if hooks.pause is not None:
                hooks.pause()
            if hooks.should_stop is not None and hooks.should_stop():
                stats["stopped"] = True
                break
            t0 = time.perf_counter()
            mb = [data.train[j] for j in order[i * cfg.minibatch_size:(i + 1) * cfg.minibatch_size]]
            step = _optimizer_step(policy, collate(mb, policy.pad_id, policy.device), cfg, scales,
                                   pairs=_pairs_for(data, i, cfg.minibatch_size), opt=opt)
            step["epoch"] = epoch
            stats["first"] = stats["first"] or step
            stats["last"] = step
            stats["steps"] += 1
            step_times.append(time.perf_counter() - t0)
            bar.set_postfix(loss=f"{step['loss']:.4f}", refresh=False)
            bar.update(1)
            if hooks.after_step is not None:
                policy.model.eval()
                hooks.after_step(stats["steps"], opt)
                policy.model.train()
        if stats["stopped"]:
            break
    bar.close()
    policy.model.eval()
    stats.update(seconds_per_step=sum(step_times) / len(step_times) if step_times else None,
                 loop_seconds=sum(step_times), samples=len(data.train), lr_last=opt.param_groups[0]["lr"])
    return stats  # loop_seconds: the loop only; the manifest's train_seconds is the whole run


def _optimizer_step(policy, batch: Batch, cfg: TrainConfig, scales: RunScales, *, pairs: list[Pair], opt) -> dict:
    parts, step = step_parts(policy, batch, cfg, scales, pairs)
    loss = total_loss(parts, cfg.losses)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    trainable = [p for group in opt.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    opt.step()
    step.update({name: float(t.detach()) for name, t in parts.items()})
    step.update(loss=float(loss.detach()), grad_norm=float(grad_norm))
    return step


@torch.no_grad()
def reply_logprob_sums(model, samples: list[Sample], pad_id: int, device: torch.device,
                       batch_size: int = 8) -> list[float]:
    """Temperature-1 log-probability of each whole reply under `model` (for tests and reports)."""
    out: list[float] = []
    for i in range(0, len(samples), batch_size):
        batch = collate(samples[i:i + batch_size], pad_id, device)
        logp = sequence_logprobs(reply_logits(model, batch), batch.targets, batch.mask)  # [B,T]
        out += logp.sum(-1).tolist()
    return out
