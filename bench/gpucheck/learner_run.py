"""One learner run on the device: learner/train.py on synthetic logged replies.

The replies are what the service would log: sampled by the engine from the base model
(temperature 0.7, top-p 0.9) with their behavior log-probs, given seeded random rewards. The run
uses the default TrainConfig (LoRA r16 on every linear layer, mini-batches of 8, PG + KL + SFT +
KTO as configured); the gate's own functions give the KL to the parent on held-out replies.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from core.sampling import SamplingParams
from gpucheck.common import Check, Context, rnd
from gpucheck.drive import Ask, Driver
from gpucheck.models import build_model, chat_ids
from learner.config import TrainConfig
from learner.gate import kl_to_parent, nonfinite_weights, snapshot_parent
from learner.policy import Policy
from learner.samples import Dataset, Sample
from learner.train import train, wrap_with_lora

QUESTIONS = ["Why is the sky blue?", "How do plants make food?", "What is a prime number?",
             "Explain gravity to a child.", "How does a bicycle stay upright?", "What causes rain?",
             "Why do we have seasons?", "What is an atom made of?"]
# The CPU figure the GPU is judged against (bench/results/gpu_check_cpu.json, made by the command in
# docs/benchmarks.md); DESIGN.md's 2-core CPU figure when that file is missing: one 8x128-token step in ~6 s.
CPU_RESULTS = Path(__file__).resolve().parents[1] / "results" / "gpu_check_cpu.json"
DESIGN_CPU_SAMPLES_PER_S = {"smollm2-135m": 8 / 6.0}


def cpu_figure(model: str) -> tuple[float | None, str]:
    """Learner samples/s on the 2-core CPU box for this model, and where the figure comes from."""
    try:
        rows = json.loads(CPU_RESULTS.read_text()).get("learner", [])
        for row in rows:
            if row.get("model") == model and row.get("samples_per_s"):
                return row["samples_per_s"], f"{CPU_RESULTS.name} ({row.get('reply_tokens')} reply tokens)"
    except (OSError, ValueError):
        pass
    fig = DESIGN_CPU_SAMPLES_PER_S.get(model)
    return fig, "DESIGN.md (8x128 tokens per ~6 s step)" if fig else "none"


def synthetic_samples(ctx: Context, model, n: int, reply_tokens: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=reply_tokens)
    asks = [Ask(chat_ids(ctx.tokenizer, f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"),
                SamplingParams(**{**params.to_dict(), "seed": seed * 1000 + i})) for i in range(n)]
    drv = Driver(model, ctx.tokenizer, ctx.device, max_batch=64)
    try:
        streams = drv.run(asks)
    finally:
        drv.close()
    return [Sample(reply_id=f"r{i}", user_id=f"u{i % 16}", prompt_ids=s.ask.prompt, reply_ids=s.tokens,
                   behavior_logp=s.logprobs, reward=round(rng.uniform(-1, 1), 3), adapter_version="base",
                   params=s.ask.params) for i, s in enumerate(streams)]


def train_once(ctx: Context, name: str, n_train: int, n_holdout: int, reply_tokens: int) -> dict:
    model = build_model(name, ctx.tokenizer, ctx.device, ctx.dtype)
    t = time.perf_counter()
    samples = synthetic_samples(ctx, model, n_train + n_holdout, reply_tokens)
    sample_s = time.perf_counter() - t
    cfg = TrainConfig()
    pad = ctx.tokenizer.pad_token_id
    peft_model = wrap_with_lora(model, cfg, None)
    policy = Policy(model=peft_model, tokenizer=ctx.tokenizer, model_id=name, device=ctx.device, dtype=ctx.dtype,
                    pad_id=pad)
    holdout, train_set = samples[:n_holdout], samples[n_holdout:]
    parent = snapshot_parent(policy, holdout)
    data = Dataset(train=train_set, holdout=holdout, pairs=[], last_id=None, last_pair_id=None)
    ctx.reset_peak()
    t = time.perf_counter()
    stats = train(policy, data, cfg, progress=False)
    ctx.sync()
    secs = time.perf_counter() - t
    peak = ctx.peak_gib()
    kl = kl_to_parent(policy, holdout, parent)
    moved = max(float(p.detach().abs().max()) for n, p in peft_model.named_parameters() if "lora_B" in n)
    cpu, source = cpu_figure(name)
    per_s = len(train_set) / secs
    return {"model": name, "samples": len(train_set), "reply_tokens": reply_tokens, "steps": stats["steps"],
            "seconds": rnd(secs, 3), "s_per_sample": rnd(secs / len(train_set)), "samples_per_s": rnd(per_s, 3),
            "cpu_samples_per_s": rnd(cpu, 3), "cpu_source": source, "vs_cpu": rnd(per_s / cpu, 2) if cpu else None,
            "peak_gib": peak, "kl_to_parent": kl, "loss_first": rnd(stats["first"]["loss"]),
            "loss_last": rnd(stats["last"]["loss"]), "nonfinite": nonfinite_weights(peft_model),
            "lora_b_max": moved,
            "sampling_s": rnd(sample_s, 3)}


def run(ctx: Context, n_train: int, n_holdout: int, reply_tokens: int) -> tuple[list[dict], list[Check]]:
    rows, checks = [], []
    for name in ctx.models:
        if ctx.left() < (20 if ctx.quick else 60):
            rows.append({"model": name, "skipped": "out of time"})
            continue
        row = train_once(ctx, name, n_train, n_holdout, reply_tokens)
        rows.append(row)
        kl = row["kl_to_parent"]
        ok = not row["nonfinite"] and row["lora_b_max"] > 0 and 0 <= kl < 10   # NaN fails both comparisons
        checks.append(Check(f"learner run ({name})", ok, {"kl_to_parent": kl, "lora_b_max": row["lora_b_max"],
                                                          "nonfinite": row["nonfinite"][:4]},
                            dtype=str(ctx.dtype).removeprefix("torch.")))
        if ctx.cuda:
            torch.cuda.empty_cache()
    return rows, checks
