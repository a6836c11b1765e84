"""The learner process's resident memory across runs: what a `learn` worker does, N runs in one
process (embedded Redis, 16 new rewarded replies a run, the default TrainConfig), RSS after each.

    --reload   drop the cached base model after every run, as the learner did before it kept one
               (each run loaded the model afresh): the difference is what caching it saves

    flock /tmp/rl-heavy.lock .venv/bin/python bench/learner_memory.py --runs 5
    flock /tmp/rl-heavy.lock .venv/bin/python bench/learner_memory.py --runs 5 --reload
    .venv/bin/python bench/learner_memory.py --model tiny-random --runs 10 --out /tmp/m.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import redis

from core.embedded_redis import EmbeddedRedis
from core.keys import Keys
from core.settings import Settings
from learner import policy as policy_mod
from learner.config import TrainConfig
from learner.runner import run_once
from tests.learner.conftest import favoured, make_logged, write_logged
from tests.support.processes import MODELS, REPO


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--per-run", type=int, default=16, help="new rewarded replies before each run")
    p.add_argument("--reload", action="store_true", help="load the base model afresh every run (the old way)")
    p.add_argument("--out", default=None, help="default bench/results/learner_memory[_reload].json")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rl-bench-memory-"))
    server = EmbeddedRedis(work / "redis")
    server.start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    keys = Keys("mem:")
    settings = Settings(redis_url=server.url, prefix="mem:", data_dir=work / "data", model_cache_dir=MODELS,
                        model=args.model, device="cpu", publish_mode="stable", min_samples=4,
                        learner_machine="dedicated")
    sampler = policy_mod.Policy.load(args.model, MODELS, "cpu")   # the replies come from the model itself
    pool = make_logged(sampler, args.per_run * args.runs, n_tokens=16, users=8)
    if args.reload:
        policy_mod.forget(args.model, MODELS, "cpu")
    rows, t0 = [], time.time()
    try:
        for k in range(args.runs):
            items = pool[args.per_run * k:args.per_run * (k + 1)]
            write_logged(r, keys, items, lambda i: 1.0 if favoured(i) else -1.0, version=str(k) if k else "base")
            t = time.time()
            res = run_once(settings, TrainConfig(), progress=False)   # the shipped defaults
            if args.reload:
                policy_mod.forget(args.model, MODELS, "cpu")
            rows.append({"run": k + 1, "state": res.state, "parent": res.stats.get("parent"),
                         "rss_mb": round(rss_mb(), 1), "seconds": round(time.time() - t, 1)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    growth = rows[-1]["rss_mb"] - rows[0]["rss_mb"]
    out = Path(args.out or REPO / "bench" / "results" / f"learner_memory{'_reload' if args.reload else ''}.json")
    out.write_text(json.dumps({"args": vars(args), "runs": rows, "growth_after_first_mb": round(growth, 1),
                               "model_loads": sum(policy_mod.LOADS.values()), "seconds": round(time.time() - t0)},
                              indent=2))
    print(f"RSS {rows[0]['rss_mb']:.0f} MB after run 1, {rows[-1]['rss_mb']:.0f} MB after run {len(rows)} "
          f"({growth:+.0f} MB); base model loaded {sum(policy_mod.LOADS.values())} time(s); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
