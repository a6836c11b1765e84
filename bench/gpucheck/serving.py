"""Serving throughput, side by side in one process: the engine at N sessions against static
batched `model.generate` (N copies of the prompt in one call: the practical ceiling) and batch-1
`generate` (one session at a time). Every reply is exactly `tokens` long: the engine has no stop
token, generate gets min_new_tokens = max_new_tokens. Greedy everywhere.
"""
from __future__ import annotations

import time

import torch

from core.sampling import SamplingParams
from gpucheck.common import Context, median, pct, rnd
from gpucheck.drive import Ask, Driver
from gpucheck.models import build_model, chat_ids


def _generate(ctx: Context, model, ids: list[int], rows: int, tokens: int) -> float:
    """Seconds for one static batch of `rows` copies of the prompt, `tokens` new tokens each."""
    inp = torch.tensor([ids] * rows, device=ctx.device)                  # [rows, P]: same length, no padding
    ctx.sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), max_new_tokens=tokens,
                             min_new_tokens=tokens, do_sample=False, pad_token_id=ctx.tokenizer.pad_token_id)
    ctx.sync()
    assert out.shape == (rows, len(ids) + tokens), f"generate gave {tuple(out.shape)}"
    return time.perf_counter() - t0


def static_generate(ctx: Context, model, ids, rows: int, tokens: int) -> dict:
    ttft = _generate(ctx, model, ids, rows, 1)             # the whole batch's prefill + its first token
    ctx.reset_peak()
    secs = _generate(ctx, model, ids, rows, tokens)
    return {"tok_s": rows * tokens / secs, "ttft_s": ttft, "peak_gib": ctx.peak_gib()}


def batch1_generate(ctx: Context, model, ids, tokens: int, runs: int) -> dict:
    times = [_generate(ctx, model, ids, 1, tokens) for _ in range(runs)]
    ttft = median([_generate(ctx, model, ids, 1, 1) for _ in range(runs)])
    return {"tok_s": tokens / median(times), "ttft_s": ttft}


def engine_run(ctx: Context, model, ids, sessions: int, tokens: int, max_batch: int) -> dict:
    drv = Driver(model, ctx.tokenizer, ctx.device, max_batch=max_batch)
    try:
        drv.run([Ask(list(ids), SamplingParams(temperature=0.0, max_new_tokens=4))])   # warm: first forward
        asks = [Ask(list(ids), SamplingParams(temperature=0.0, max_new_tokens=tokens, seed=i)) for i in range(sessions)]
        ctx.reset_peak()
        t0 = time.perf_counter()
        streams = drv.run(asks)
        secs = time.perf_counter() - t0
        status = drv.status()
    finally:
        drv.close()
    bad = [s.reason for s in streams if s.reason != "length" or len(s.tokens) != tokens]
    if bad:
        raise RuntimeError(f"{len(bad)} of {sessions} engine streams did not run to {tokens} tokens: {bad[:4]}")
    ttfts = [s.ttft for s in streams]
    return {"tok_s": sessions * tokens / secs, "ttft_p50_s": pct(ttfts, 50), "ttft_p95_s": pct(ttfts, 95),
            "peak_gib": ctx.peak_gib(), "batched_rows": status["batched_rows"]}


def _row(name, n, tokens, max_batch, *, eng, static, b1) -> dict:
    return {"model": name, "sessions": n, "tokens": tokens, "max_batch": max_batch,
            "engine_tok_s": rnd(eng["tok_s"], 1), "engine_ttft_p50_s": rnd(eng["ttft_p50_s"]),
            "engine_ttft_p95_s": rnd(eng["ttft_p95_s"]), "engine_peak_gib": eng["peak_gib"],
            "static_tok_s": rnd(static["tok_s"], 1), "static_ttft_s": rnd(static["ttft_s"]),
            "static_peak_gib": static["peak_gib"], "batch1_tok_s": rnd(b1["tok_s"], 1),
            "batch1_ttft_s": rnd(b1["ttft_s"]), "vs_static": rnd(eng["tok_s"] / static["tok_s"], 3),
            "vs_batch1": rnd(eng["tok_s"] / b1["tok_s"], 2)}


def run(ctx: Context, sessions: tuple[int, ...], tokens: int, max_batches: tuple[int, ...],
        row_budget_s: float) -> tuple[list[dict], list[str]]:
    """Rows per (model, sessions, engine max_batch); sizes skipped for lack of time are named."""
    rows, skipped = [], []
    for name in ctx.models:
        if ctx.left() < row_budget_s:
            skipped.append(f"{name}: all sizes (out of time)")
            continue
        model = build_model(name, ctx.tokenizer, ctx.device, ctx.dtype)
        ids = chat_ids(ctx.tokenizer)
        _generate(ctx, model, ids, 2, 4)                     # warm: kernels, cuBLAS handles
        b1 = batch1_generate(ctx, model, ids, tokens, runs=1 if ctx.quick else 3)
        for n in sessions:
            static = None
            for mb in sorted({min(mb, max(n, 1)) for mb in max_batches}):
                if ctx.left() < row_budget_s:
                    skipped.append(f"{name} x{n} max_batch {mb} (out of time)")
                    continue
                static = static or static_generate(ctx, model, ids, n, tokens)
                rows.append(_row(name, n, tokens, mb, eng=engine_run(ctx, model, ids, n, tokens, mb), static=static, b1=b1))
        del model
        if ctx.cuda:
            torch.cuda.empty_cache()
    return rows, skipped
