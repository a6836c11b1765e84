"""The engine's tests, run on the check's device and dtype by the check itself (no pytest there).

On the tiny model (seconds), each in float32 and in bfloat16, against a float32 reference of the
same weights (reference.py): batched streams give the tokens they give alone; a prefix-cached
conversation gives the tokens it gives without the cache; rows on two adapter versions and the
base model share a forward and each gets its own version; cancel ends a stream at once and
frees it; seeded sampling reproduces on the device's own generators. Mirrors tests/service/
test_batching.py, test_prefix_cache.py, test_adapter_slots.py, test_sampling_batch.py.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from core.sampling import SamplingParams
from gpucheck.common import Check
from gpucheck.drive import Ask, Driver
from gpucheck.models import build_model, write_random_adapter
from gpucheck.reference import Reference, greedy_agree, logprob_error, summarize_errors

# Near-tie allowance (reference logit spreads between the top and the token taken) and log-prob
# error allowance (same unit) per dtype. bf16's: measured on CPU bf16 (bench/results/gpu_check_*.json
# report the max seen); a wrong context or adapter gives errors of order 1.
TIE_TOL = {torch.float32: 1e-3, torch.bfloat16: 0.1}
LOGPROB_TOL = {torch.float32: 1e-3, torch.bfloat16: 0.25}
GREEDY = dict(temperature=0.0, top_p=1.0)
PLAIN = dict(temperature=1.0, top_p=1.0)     # logged log-prob = log_softmax(logits)[token]: comparable


def _asks(lengths, tokens, params, adapters=None) -> list[Ask]:
    adapters = adapters or [None] * len(lengths)
    return [Ask(list(range(3 + i, 3 + i + n)), SamplingParams(**params, max_new_tokens=tokens + i, seed=n),
                adapter=a) for i, (n, a) in enumerate(zip(lengths, adapters))]


def _agree(ref, alone, together, tol) -> tuple[bool, dict]:
    results = [greedy_agree(ref, a.ask.adapter, a.ask.prompt, a.tokens, t.tokens, tol)
               for a, t in zip(alone, together)]
    detail = {"streams": len(results), "exact": sum(r["exact"] for r in results),
              "near_ties": [r for r in results if not r["exact"]]}
    return all(r["ok"] for r in results), detail


def _lengths_ok(streams) -> bool:
    return all(s.reason == "length" and len(s.tokens) == s.ask.params.max_new_tokens for s in streams)


def check_batched(ctx, dtype) -> Check:
    model = build_model("tiny", ctx.tokenizer, ctx.device, dtype)
    ref = Reference(model, ctx.device)
    drv = Driver(model, ctx.tokenizer, ctx.device)
    try:
        asks = _asks((4, 9, 2, 6, 11, 3, 7, 5), 12, GREEDY)
        alone = [drv.run([a])[0] for a in asks]
        solo_rows = drv.status()["batched_rows"]
        together = drv.run(asks)
        ok, detail = _agree(ref, alone, together, TIE_TOL[dtype])
        sampled = drv.run(_asks((4, 9, 2, 6, 11, 3, 7, 5), 12, PLAIN))
        errs = summarize_errors([logprob_error(ref, s.ask.prompt, s.tokens, s.logprobs, None) for s in sampled])
        batched = drv.status()["batched_rows"] > solo_rows == 0
        detail.update(logprob_error=errs, batched=batched)
        ok = ok and batched and _lengths_ok(alone + together + sampled) and errs["max"] < LOGPROB_TOL[dtype]
        return Check("batched streams = each alone", ok, detail)
    finally:
        drv.close()


def _conversation(drv, turns, key) -> list[tuple[list[int], list[int]]]:
    """Greedy turns of one session whose history is exactly the previous prompt + reply."""
    prompt, out = [], []
    for new in turns:
        prompt = prompt + new
        ask = Ask(list(prompt), SamplingParams(**GREEDY, max_new_tokens=8), cache_key=(key, "base"))
        reply = drv.run([ask])[0].tokens
        out.append((list(prompt), reply))
        prompt = prompt + reply
    return out


def check_prefix_cache(ctx, dtype) -> Check:
    model = build_model("tiny", ctx.tokenizer, ctx.device, dtype)
    ref = Reference(model, ctx.device)
    turns = [list(range(3, 40)), [50, 51, 52, 53], [60, 61], [70, 71, 72]]
    runs, stats = {}, None
    for mb in (0, 64):
        drv = Driver(model, ctx.tokenizer, ctx.device, prefix_cache_bytes=mb << 20, prefill_chunk=16)
        try:
            runs[mb] = _conversation(drv, turns, "s")
            stats = drv.status()["prefix"] or stats
        finally:
            drv.close()
    results = []
    for (p0, r0), (p64, r64) in zip(runs[0], runs[64]):
        if p0 != p64:        # an earlier turn diverged at a near-tie: the histories differ from here on
            break
        results.append(greedy_agree(ref, None, p0, r0, r64, TIE_TOL[dtype]))
    ok = all(r["ok"] for r in results) and stats["hits"] >= 3
    return Check("prefix cache = no cache (greedy)", ok, {"turns_compared": len(results),
                                                          "exact": sum(r["exact"] for r in results),
                                                          "near_ties": [r for r in results if not r["exact"]],
                                                          "cache": stats})


def check_mixed_adapters(ctx, dtype) -> Check:
    model = build_model("tiny", ctx.tokenizer, ctx.device, dtype)
    ref = Reference(model, ctx.device)
    drv = Driver(model, ctx.tokenizer, ctx.device)
    root = Path(tempfile.mkdtemp(prefix="gpucheck-mixed-"))
    try:
        folders = {v: write_random_adapter(model, root / v, seed=int(v), rank=4, scale=0.5,
                                           targets=("q_proj", "v_proj", "down_proj")) for v in ("1", "2")}
        for v, folder in folders.items():    # loading wraps `model` in PEFT: every adapter is written first
            drv.load_adapter(v, folder)
            ref.add_adapter(v, folder)
        versions = ["1", "2", None, "1", "2", None]
        asks = _asks((4, 7, 5, 6, 3, 8), 10, GREEDY, versions)
        alone = [drv.run([a])[0] for a in asks]
        other = drv.run([Ask(asks[0].prompt, asks[0].params, adapter="2")])[0]
        mixed_before = drv.status()["mixed_forwards"]
        together = drv.run(asks)
        ok, detail = _agree(ref, alone, together, TIE_TOL[dtype])
        sampled = drv.run(_asks((4, 7, 5, 6, 3, 8), 10, PLAIN, versions))
        errs = summarize_errors([logprob_error(ref, s.ask.prompt, s.tokens, s.logprobs, s.ask.adapter)
                                 for s in sampled])
        # each stream scored against another version: every one must be far off (the check can see it)
        wrong = min(max(logprob_error(ref, s.ask.prompt, s.tokens, s.logprobs, "2" if s.ask.adapter == "1" else "1"))
                    for s in sampled)
        status = drv.status()
        detail.update(mixed_forwards=status["mixed_forwards"] - mixed_before, logprob_error=errs,
                      other_version_error_min=round(wrong, 4), versions_differ=other.tokens != alone[0].tokens,
                      refs=status["refs"])
        ok = (ok and detail["mixed_forwards"] > 0 and detail["versions_differ"] and errs["max"] < LOGPROB_TOL[dtype]
              < wrong and all(n == 0 for n in status["refs"].values()))
        return Check("mixed adapters in one batch", ok, detail)
    finally:
        drv.close()


def check_cancel(ctx, dtype) -> Check:
    model = build_model("tiny", ctx.tokenizer, ctx.device, dtype)
    drv = Driver(model, ctx.tokenizer, ctx.device)
    try:
        asks = _asks((5, 6), 4000, GREEDY) + _asks((7, 8), 48, GREEDY)
        streams, done = drv.start(asks)
        for s in streams:
            s.started.wait(120)
        t0 = time.perf_counter()
        for s in streams[:2]:
            drv.cancel(s)
        ended = done.result(300)
        latency = max(s.ended for s in ended[:2]) - t0
        status = drv.status()
        detail = {"reasons": [s.reason for s in ended], "tokens": [len(s.tokens) for s in ended],
                  "cancel_to_end_s": round(latency, 4), "refs": status["refs"], "failed": status["failed_requests"]}
        ok = ([s.reason for s in ended] == ["cancelled", "cancelled", "length", "length"]
              and all(len(s.tokens) < 4000 for s in ended[:2]) and _lengths_ok(ended[2:])
              and all(n == 0 for n in status["refs"].values()) and status["failed_requests"] == 0)
        return Check("cancel ends a stream and frees it", ok, detail)
    finally:
        drv.close()


def check_generator(ctx, dtype) -> Check:
    """Each request draws from its own seeded generator on the device: a stream run alone twice
    gives the same tokens, other seeds other tokens. Alone, not batched: which round a row joins
    the batch depends on thread timing, and in bf16 the batch's padding moves the rounding of a
    logit enough, now and then, to move a draw (batched streams are checked by their log-probs)."""
    model = build_model("tiny", ctx.tokenizer, ctx.device, dtype)
    drv = Driver(model, ctx.tokenizer, ctx.device)
    try:
        def alone(seed0):
            return [drv.run([Ask(list(range(3, 3 + n)), SamplingParams(
                temperature=0.9, top_p=0.95, max_new_tokens=12, seed=seed0 + n))])[0].tokens for n in (3, 5, 8)]
        first, again, other = alone(0), alone(0), alone(100)
        together = [s.tokens for s in drv.run([Ask(list(range(3, 3 + n)), SamplingParams(
            temperature=0.9, top_p=0.95, max_new_tokens=12, seed=n)) for n in (3, 5, 8)])]
        ok = first == again and all(o != f for o, f in zip(other, first)) and all(len(t) == 12 for t in first)
        return Check("seeded sampling on the device's generators", ok,
                     {"reproduces": first == again, "other_seeds_differ": [o != f for o, f in zip(other, first)],
                      "batched_rows_equal_alone": sum(t == f for t, f in zip(together, first)),
                      "device": str(ctx.device)})
    finally:
        drv.close()


CHECKS = (check_batched, check_prefix_cache, check_mixed_adapters, check_cancel, check_generator)


def run(ctx) -> list[Check]:
    """Every check in float32 (greedy must match exactly) and bfloat16 (up to near-ties); --quick:
    bfloat16 only, the GPU's serving dtype, whose tolerances are what a CPU run can get wrong."""
    out = []
    for dtype in (torch.bfloat16,) if ctx.quick else (torch.float32, torch.bfloat16):
        for fn in CHECKS:
            t = time.perf_counter()
            try:
                check = fn(ctx, dtype)
            except Exception as exc:    # one broken check is reported; the others still run
                check = Check(fn.__name__.removeprefix("check_").replace("_", " "), False,
                              {"error": f"{type(exc).__name__}: {exc}"[:800]})
            check.dtype = str(dtype).removeprefix("torch.")
            check.seconds = round(time.perf_counter() - t, 2)
            out.append(check)
    return out
