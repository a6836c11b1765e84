"""One prepared check of the engine, the learner and hot swap on a GPU, in minutes.

    python bench/gpu_check.py [--device cuda] [--out FILE.json]     # the GPU box: ~6 min on one H200
    python bench/gpu_check.py --device cpu --quick --out FILE.json  # here and in CI: the tiny model, < 1 min

Sections, each recorded in the JSON as it finishes (a run cut short keeps what it measured):
1. environment: device, dtype, torch / transformers / peft versions, free device memory;
2. the engine's tests on the device (tiny model, float32 and bfloat16): batched = alone, prefix
   cache = no cache, mixed adapters in one batch, cancel, seeded sampling on the device;
3. hot swap: adapter versions loaded between decode rounds under N streams;
4. the learner: one learner/train.py run on synthetic logged replies;
5. serving: the engine at 1/16/64/256 sessions against static batched and batch-1 generate.
Models are built on the spot with random weights (SmolLM2-135M's config, a ~1B Llama shape) around
the real SmolLM2 tokenizer shipped in bench/gpucheck/assets/. Nothing here imports Redis, Celery or
the web stack (the GPU box has none of them): the check fails loudly if anything does.
Exit status: 0 when every check passed, 1 when one failed, 3 on a forbidden import. The aims are
reported, not enforced. docs/benchmarks.md has the device tool's command line.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from gpucheck import guard  # noqa: E402

WATCH = guard.ImportWatch().install()   # before anything of the project is imported

import torch  # noqa: E402
from gpucheck.common import Context  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when torch sees one)")
    p.add_argument("--dtype", default="auto", help="bfloat16 or float32 for serving, learner and swap "
                                                   "(auto: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--quick", action="store_true", help="the tiny model and small sizes: the CI run")
    p.add_argument("--out", default=None, help="JSON path (default: $OUT/gpu_check.json on the device "
                                               "machine, else bench/results/gpu_check.json)")
    p.add_argument("--tokenizer", default=None, help="folder with SmolLM2's tokenizer files (default: the "
                                                     "copy in bench/gpucheck/assets)")
    p.add_argument("--sections", default="checks,hotswap,learner,serving",
                   help="comma-separated subset of checks,hotswap,learner,serving")
    p.add_argument("--models", default=None, help="serving/learner models (default: smollm2-135m,llama-1b; "
                                                  "--quick: tiny)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new work after this many seconds (default 330: a machine's start, one run "
                        "and a rerun of a part fit a 15-minute lease; --quick 120)")
    p.add_argument("--learner-samples", type=int, default=None, help="training samples (default 64, quick 8)")
    p.add_argument("--sessions", default=None, help="serving session counts (default 1,16,64,256; quick 1,4)")
    p.add_argument("--tokens", type=int, default=None, help="serving new tokens per reply (default 128, quick 8)")
    p.add_argument("--swap", default=None, help="hot swap STREAMS,TOKENS,SWAPS (default 64,320,10; quick 8,48,3)")
    return p.parse_args(argv)


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    import peft
    import transformers
    env = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
           "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "host": platform.machine(),
           "fp32_matmul_precision": torch.get_float32_matmul_precision(),
           "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info()
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                   free_gib=round(free / 2 ** 30, 1), total_gib=round(total / 2 ** 30, 1))
    else:
        env.update(device_name=platform.processor() or "cpu", threads=torch.get_num_threads())
    return env


def context(args) -> Context:
    from gpucheck.models import load_tokenizer

    from core.modeling import pick_device
    device, dtype = pick_device(args.device, args.dtype)
    budget = args.budget_s or (120.0 if args.quick else 330.0)
    models = tuple(args.models.split(",")) if args.models else (("tiny",) if args.quick else ("smollm2-135m", "llama-1b"))
    return Context(device=device, dtype=dtype, tokenizer=load_tokenizer(args.tokenizer), quick=args.quick,
                   deadline=time.monotonic() + budget, models=models,
                   swap_model="tiny" if args.quick else "smollm2-135m")


def _brief(detail: dict) -> str:
    text = json.dumps({k: v for k, v in detail.items() if k not in ("near_ties", "cache")}, default=str)
    return text if len(text) <= 90 else text[:87] + "..."


def section(name: str, ctx: Context, args):
    """Run one section -> (payload updates, checks)."""
    from gpucheck import engine_checks, hotswap, learner_run, serving
    if name == "checks":
        return {}, engine_checks.run(ctx)
    if name == "hotswap":
        streams, tokens, swaps = (tuple(int(x) for x in args.swap.split(",")) if args.swap
                                  else (8, 48, 3) if ctx.quick else (64, 320, 10))
        if swaps < 2:
            raise ValueError("--swap needs at least 2 swaps (the torn-adapter control mixes versions 2 and 3)")
        report, checks = hotswap.run(ctx, ctx.swap_model, streams, tokens, swaps)
        report.update(model=ctx.swap_model, streams_at_start=streams,
                      own_error_max=report["logprob_error_own_version"]["max"])
        return {"hotswap": report}, checks
    if name == "learner":
        n = args.learner_samples or (8 if ctx.quick else 64)
        rows, checks = learner_run.run(ctx, n, max(4, n // 4), 16 if ctx.quick else 128)
        return {"learner": rows}, checks
    if name == "serving":
        sessions, tokens, batches = ((1, 4), 8, (32,)) if ctx.quick else ((1, 16, 64, 256), 128, (32, 256))
        sessions = tuple(int(x) for x in args.sessions.split(",")) if args.sessions else sessions
        tokens = args.tokens or tokens
        rows, skipped = serving.run(ctx, sessions, tokens, batches, row_budget_s=5 if ctx.quick else 25)
        return {"serving": rows, "skipped": skipped}, []
    raise ValueError(f"unknown section {name!r}: use checks, hotswap, learner, serving")


def write(payload: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(out)


def run_sections(ctx: Context, args, payload: dict, out: Path) -> None:
    """Each section in turn; its figures and checks go into the JSON as soon as it ends. A section
    that raises is recorded (with where it raised) and the next one still runs."""
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        t = time.monotonic()
        print(f"[gpu_check] {name}: started", flush=True)     # the log says where a hang stopped it
        checks, error = [], None
        try:
            updates, checks = section(name, ctx, args)
            payload.update({k: v for k, v in updates.items() if k != "skipped"})
            payload["skipped"] += updates.get("skipped", [])
        except Exception as exc:
            frames = traceback.extract_tb(exc.__traceback__)[-4:]
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
            error = f"{name}: {type(exc).__name__}: {exc} (at {where})"[:1500]
            payload["errors"].append(error)
        payload["checks"] += [dict(vars(c), brief=_brief(c.detail)) for c in checks]
        payload.setdefault("section_s", {})[name] = round(time.monotonic() - t, 1)
        write(payload, out)
        print(f"[gpu_check] {name}: {sum(c.ok for c in checks)}/{len(checks)} checks passed in "
              f"{time.monotonic() - t:.0f} s{'; ' + error if error else ''}", flush=True)


def main(argv=None) -> int:
    from gpucheck import report
    args = parse_args(argv)
    t0 = time.monotonic()
    out = Path(args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT")
                            else BENCH / "results" / "gpu_check.json"))
    payload: dict = {"schema": 1, "mode": "quick" if args.quick else "full", "argv": sys.argv[1:], "out": str(out),
                     "checks": [], "errors": [], "skipped": []}
    try:
        from gpucheck import engine_checks, hotswap, learner_run, serving  # noqa: F401 (all they import, at once)
        guard.check(WATCH)
        ctx = context(args)
        payload.update(env=environment(ctx.device, ctx.dtype), dtype=str(ctx.dtype).removeprefix("torch."),
                       models=list(ctx.models))
        write(payload, out)
        run_sections(ctx, args, payload, out)
        guard.check(WATCH)
    except guard.ForbiddenImport as exc:
        payload["errors"].append(str(exc))
        payload["forbidden_import"] = True
    payload["ok"] = bool(payload["checks"]) and not payload["errors"] and all(c["ok"] for c in payload["checks"])
    payload["wall_s"] = round(time.monotonic() - t0, 1)
    payload["aims"] = report.aims(payload)
    write(payload, out)
    print(report.render(payload), flush=True)
    return 3 if payload.get("forbidden_import") else 0 if payload["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
