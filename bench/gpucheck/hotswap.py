"""Hot swap under load: new adapter versions loaded between decode rounds while N streams run.

As the server does it (service/serving/swap_backends.LocalAdapters): each version is validated
off the engine thread (core.adapter_format.validate_adapter), loaded on the engine thread between
decode steps, the slot pool is refilled with spares after each swap, and the version before is
unloaded once its streams have ended. Half the first streams run on version 1, half on
the base model, long enough to outlast the swaps; every swap starts two short streams on the new
version.

What is shown:
- swap time: from asking the engine thread to load until the load is done (the wait for the
  forward pass in progress + the load), p50/p95, and which path (copy into a free slot, or build);
- no stream dropped: every stream ends with "length" and exactly its tokens;
- no token from a half-loaded adapter: every streamed token's logged log-prob matches a float32
  reference with its own version fully loaded (reference.logprob_error). The positive control
  shows the detector would fire: the same tokens scored against an adapter torn between two
  versions (half of its layers from each, as an interrupted copy would leave it) and against the
  previous version are far outside the tolerance.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from core.adapter_format import validate_adapter
from core.sampling import SamplingParams
from gpucheck.common import Check, Context, median, pct, rnd
from gpucheck.drive import Ask, Driver
from gpucheck.engine_checks import LOGPROB_TOL
from gpucheck.models import build_model, chat_ids, half_loaded, write_random_adapter
from gpucheck.reference import Reference, logprob_error, summarize_errors

POOL = 8          # REWARDLOOP_ADAPTER_SLOTS' default
LORA_SCALE = 0.05


def _adapters(ctx: Context, model, name: str, versions: int, root: Path) -> tuple[dict, dict, Path, float]:
    model_id = f"gpucheck/{name}"
    folders = {str(v): write_random_adapter(model, root / f"v{v}", seed=v, scale=LORA_SCALE, model_id=model_id)
               for v in range(1, versions + 1)}
    half = half_loaded(folders["2"], folders["3"], root / "half", model_id)
    names = {n for n, _ in model.named_modules()}
    t = time.perf_counter()
    valid = {v: validate_adapter(f, model_id, names) for v, f in folders.items()}
    return folders, valid, half, (time.perf_counter() - t) / len(folders)


def _ask(ctx, i: int, version: str | None, tokens: int) -> Ask:
    return Ask(chat_ids(ctx.tokenizer, f"Tell me about topic number {i}."),
               SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=tokens, seed=i), adapter=version)


def _fill_spares(drv: Driver, version: str) -> float:
    """Build spare slots up to the pool size (the server does this after each swap); seconds spent."""
    t = time.perf_counter()
    while len(drv.slots.shape) < POOL and drv.add_spare(version) is not None:
        pass
    return time.perf_counter() - t


def _swap_loop(ctx, drv, folders, valid, first, new_tokens) -> tuple[list[dict], list]:
    """Swap to versions 2, 3, ... while `first` streams run. Each new version gets two short
    streams; once the previous version's streams end it is unloaded (its slot goes back to the
    pool: later versions are copies into freed slots, as with swaps minutes apart in service)."""
    log, extra = [], []
    for k in range(2, len(folders) + 1):
        v = str(k)
        active = sum(1 for s in first if not s.ended)
        timing = drv.load_adapter(v, folders[v], valid[v])
        extra.append(drv.start([_ask(ctx, 1000 * k + j, v, new_tokens) for j in range(2)]))
        spares = _fill_spares(drv, v)
        unloaded = None
        if k >= 3:
            extra[-2][1].result(300)             # the previous version's streams have ended
            unloaded = drv.unload_adapter(str(k - 1))
        timing.update(version=v, active_streams=active, unloaded_previous=unloaded, spares_s=spares)
        log.append(timing)
    return log, extra

def _gaps(streams) -> list[float]:
    return [b - a for s in streams for a, b in zip(s.times, s.times[1:])]


def run(ctx: Context, name: str, streams_n: int, tokens: int, swaps: int) -> tuple[dict, list[Check]]:
    model = build_model(name, ctx.tokenizer, ctx.device, ctx.dtype)
    ref = Reference(model, ctx.device)
    root = Path(tempfile.mkdtemp(prefix="gpucheck-swap-"))
    folders, valid, half, validate_s = _adapters(ctx, model, name, swaps + 1, root)
    for v, f in folders.items():
        ref.add_adapter(v, f)
    ref.add_adapter("torn", half)
    drv = Driver(model, ctx.tokenizer, ctx.device)
    try:
        drv.use_slots(pool_size=POOL)
        initial = drv.load_adapter("1", folders["1"], valid["1"])
        initial["spares_s"] = _fill_spares(drv, "1")
        first, done = drv.start([_ask(ctx, i, "1" if i % 2 == 0 else None, tokens) for i in range(streams_n)])
        for s in first:
            s.started.wait(300)
        log, extra = _swap_loop(ctx, drv, folders, valid, first, 8)
        streams = done.result(600) + [s for _, fut in extra for s in fut.result(600)]
        unloaded_all = [drv.unload_adapter(v) for v in list(drv.slots.loaded)]
        status = drv.status()
    finally:
        drv.close()
    return _judge(ctx, ref, streams, log, initial=initial, validate_s=validate_s, unloaded_all=unloaded_all,
                  status=status)


def _judge(ctx, ref, streams, log, *, initial, validate_s, unloaded_all, status) -> tuple[dict, list[Check]]:
    tol = LOGPROB_TOL[ctx.dtype]
    dropped = [(s.ask.adapter, s.reason, len(s.tokens)) for s in streams
               if s.reason != "length" or len(s.tokens) != s.ask.params.max_new_tokens]
    own = summarize_errors([logprob_error(ref, s.ask.prompt, s.tokens, s.logprobs, s.ask.adapter) for s in streams])
    on3 = [s for s in streams if s.ask.adapter == "3"]
    torn = [max(logprob_error(ref, s.ask.prompt, s.tokens, s.logprobs, "torn")) for s in on3]
    prev = [max(logprob_error(ref, s.ask.prompt, s.tokens, s.logprobs, "2")) for s in on3]
    totals = [t["total_s"] for t in log]
    under_load = [t for t in log if t["active_streams"] > 0]
    report = {
        "streams": len(streams), "swaps": len(log), "swaps_under_load": len(under_load),
        "swap_p50_s": rnd(median(totals)), "swap_p95_s": rnd(pct(totals, 95)), "swap_max_s": rnd(max(totals)),
        "paths": [t["path"] for t in log], "validate_s": rnd(validate_s), "initial_load": initial,
        "log": [{k: rnd(v) if isinstance(v, float) else v for k, v in t.items()} for t in log],
        "dropped": dropped, "logprob_error_own_version": own, "tolerance": tol,
        "half_loaded_error_min": rnd(min(torn)) if torn else None,
        "previous_version_error_min": rnd(min(prev)) if prev else None,
        "token_gap_p50_s": rnd(pct(_gaps(streams), 50)), "token_gap_max_s": rnd(max(_gaps(streams), default=None)),
        "failed_requests": status["failed_requests"], "unloaded_after": unloaded_all,
    }
    checks = [
        Check("hot swap: no stream dropped", not dropped and status["failed_requests"] == 0,
              {"dropped": dropped[:8], "streams": len(streams), "swaps_under_load": len(under_load)}),
        Check("hot swap: every token from its own, fully loaded version", own["max"] is not None and own["max"] < tol,
              {"max_error": own["max"], "tolerance": tol, "tokens": own["tokens"]}),
        Check("hot swap: the check sees a torn adapter", bool(torn) and min(torn) > tol and min(prev) > tol,
              {"half_loaded_error_min": report["half_loaded_error_min"],
               "previous_version_error_min": report["previous_version_error_min"], "tolerance": tol}),
        Check("hot swap: every version unloads once its streams end",
              all(unloaded_all) and all(t["unloaded_previous"] in (None, True) for t in log),
              {"after_run": unloaded_all, "during": [t["unloaded_previous"] for t in log]}),
    ]
    for c in checks:
        c.dtype = str(ctx.dtype).removeprefix("torch.")
    if ctx.cuda:
        torch.cuda.empty_cache()
    return report, checks
