"""Pool repeated `bench/learning.py` runs: one run's head-to-head against KTO rests on 64
questions and one set of simulated chats, and runs differ more than their intervals say.

    python bench/learning_pool.py bench/results/learning.json bench/results/learning_seed*.json
        [--out bench/results/learning_pooled.json]

Prints each run's last rewardloop version against TRL's KTOTrainer, then the pooled paired
difference (all questions of all runs), the lift per 1,000 events (ours / KTO's, summed over
runs) and training seconds per sample.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import table
from bench.learning import mean_ci


def summarize(report: dict) -> dict:
    """The last rewardloop version and KTO of one run, side by side."""
    rows = {r["version"]: r for r in report["comparison"]}
    ours = [v for v in rows if v != "kto"][-1]
    return {"seed": report["args"]["seed"], "pg_baseline": report["args"].get("pg_baseline"),
            "version": ours, "events": rows[ours]["events"],
            "ours": rows[ours]["offline"]["mean"], "kto": rows["kto"]["offline"]["mean"],
            "ours_per_1k": rows[ours]["per_1k_events"], "kto_per_1k": rows["kto"]["per_1k_events"],
            "ours_s_per_sample": rows[ours]["train_s_per_sample"], "kto_s_per_sample": rows["kto"]["train_s_per_sample"],
            "diffs": [a - b for a, b in zip(report["offline_scores"][ours], report["offline_scores"]["kto"])]}


def pool(runs: list[dict]) -> dict:
    diffs = [d for r in runs for d in r["diffs"]]
    return {"runs": len(runs), "difference": mean_ci(diffs),
            "lift_per_1k_ratio": sum(r["ours_per_1k"] for r in runs) / sum(r["kto_per_1k"] for r in runs),
            "s_per_sample_ratio": sum(r["ours_s_per_sample"] for r in runs) / sum(r["kto_s_per_sample"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", help="JSON files written by bench/learning.py")
    p.add_argument("--out", default=None, help="write the pooled figures here as JSON")
    args = p.parse_args(argv)
    runs = [summarize(json.loads(Path(f).read_text())) for f in args.reports]
    print(table([{k: v for k, v in r.items() if k != "diffs"} for r in runs],
                ["seed", "pg_baseline", "version", "events", "ours", "kto", "ours_per_1k", "kto_per_1k",
                 "ours_s_per_sample", "kto_s_per_sample"]))
    pooled = pool(runs)
    d = pooled["difference"]
    print(f"\npooled over {pooled['runs']} runs, {d['n']} questions: ours minus KTO = {d['mean']:+.3f} "
          f"(95% CI [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]); lift per 1k events ours/KTO = "
          f"{pooled['lift_per_1k_ratio']:.2f}; training s/sample ours/KTO = {pooled['s_per_sample_ratio']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"files": args.reports, "runs": runs, "pooled": pooled}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
