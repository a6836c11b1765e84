"""Replay the samples of `bench/learning.py` runs through learner variants, offline.

A live learning run costs ~6 minutes and mixes two things: which objective trains the adapter
and which replies the users happened to see. This bench holds the data fixed: it reads the
samples each learner round trained on (`bench/learning.py --samples-out F`), trains every
variant on exactly those samples -- one learner run per round, each continuing the previous
adapter, as the live learner does (schedule "rounds"), or all of them at once from base
(schedule "all", as KTO is trained) -- trains TRL's KTOTrainer on all of them, and judges fresh
replies of each adapter with the simulated users' hidden taste. Replies of rounds 2+ were
sampled by the live run's own adapters, so for a variant they are off-policy data (the
importance ratio against the logged behavior log-probs is what corrects for that).

    python bench/learning_replay.py S0.jsonl S1.jsonl S2.jsonl \\
        --variant default='{}' --variant with_kto='{"losses": {"pg": 1, "kl": 0.05, "sft": 0.1, "kto": 1}}' \\
        --variant all_at_once='{"schedule": "all"}'

Prints, per variant, each file's and the pooled paired difference to KTO on the same questions
(95% CI), and writes JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import trl_baseline
from bench.common import table
from bench.learning import mean_ci, offline_eval
from learner.config import TrainConfig
from learner.dataset import Dataset, Sample
from tests.support.processes import MODELS, REPO


def train_variant(model_name: str, rounds: list[list[Sample]], cfg: TrainConfig, out: Path) -> tuple[Path, dict]:
    """One learner run per entry of `rounds`, each continuing the previous adapter, with the
    learner's step size (KL target read on the run's own replies: the logs hold no held-out
    split); the last adapter's folder."""
    from learner import gate
    from learner.policy import Policy
    from learner.run_stages import train_to_target
    parent, lineage, seconds, steps = None, None, 0.0, 0
    policy = Policy.load(model_name, MODELS, "cpu")
    for k, samples in enumerate(rounds):
        policy.wrap(cfg.lora, cfg.seed, parent)
        try:
            data = Dataset(train=samples, holdout=[], pairs=[], last_id=None, last_pair_id=None)
            stats = train_to_target(policy, data, cfg, gate.snapshot_parent(policy, []), lineage=lineage)
            lineage = (stats["lineage_reward_mean"], stats["lineage_reward_count"])
            seconds += stats["loop_seconds"]
            steps += stats["steps"]
            parent = out / f"round{k}"
            policy.model.save_pretrained(str(parent))
        finally:
            policy.release()
    return parent, {"train_s": seconds, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", nargs="+", help="JSON-lines files written by bench/learning.py --samples-out")
    p.add_argument("--variant", action="append", default=[],
                   help='NAME=JSON: TrainConfig overrides on top of the learner\'s defaults, plus "schedule": '
                        '"rounds" (default) or "all"; repeatable (default: one variant, the learner default)')
    p.add_argument("--model", default="smollm2")
    p.add_argument("--eval", type=int, default=128, help="offline replies judged per adapter")
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--no-kto", action="store_true", help="compare with base only")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "learning_replay.json"))
    args = p.parse_args(argv)
    variants = dict(v.split("=", 1) for v in args.variant) or {"default": "{}"}
    variants = {name: json.loads(spec) for name, spec in variants.items()}

    work = Path(tempfile.mkdtemp(prefix="rl-bench-replay-"))
    t0 = time.time()
    results: list[dict] = []
    for fi, path in enumerate(args.samples):
        pairs = trl_baseline.load_samples(Path(path))
        n_rounds = max(k for k, _ in pairs) + 1
        rounds = [[s for k, s in pairs if k == r] for r in range(n_rounds)]
        everything = [s for _, s in pairs]
        scores = {"base": offline_eval(args.model, None, args.eval, args.max_new_tokens, args.eval_seed)}
        cost: dict[str, dict] = {}
        if not args.no_kto:
            kto = trl_baseline.train_kto(args.model, MODELS, everything, TrainConfig(), work / f"{fi}-kto")
            scores["kto"] = offline_eval(args.model, Path(kto["adapter_dir"]), args.eval, args.max_new_tokens,
                                         args.eval_seed)
            cost["kto"] = {"train_s": kto["train_s"], "steps": kto["steps"]}
        for name, spec in variants.items():
            spec = dict(spec)
            schedule = spec.pop("schedule", "rounds")
            cfg = TrainConfig(**spec)
            folder, cost[name] = train_variant(args.model, rounds if schedule == "rounds" else [everything], cfg,
                                               work / f"{fi}-{name}")
            scores[name] = offline_eval(args.model, folder, args.eval, args.max_new_tokens, args.eval_seed)
        row = {"file": path, "samples": len(everything), "rounds": n_rounds, "scores": scores, "cost": cost}
        results.append(row)
        print(f"{path}: " + ", ".join(f"{k} {sum(v) / len(v):+.3f}" for k, v in scores.items()), flush=True)

    ref = "base" if args.no_kto else "kto"
    summary = []
    for name in [*variants, *([] if args.no_kto else ["kto"])]:
        by_file = [[a - b for a, b in zip(r["scores"][name], r["scores"][ref])] for r in results]
        per_file = [sum(d) / len(d) for d in by_file]
        pooled = mean_ci([x for d in by_file for x in d])
        summary.append({"variant": name, "spec": variants.get(name, "trl KTOTrainer"),
                        "mean reward": sum(sum(r["scores"][name]) for r in results) / sum(len(r["scores"][name])
                                                                                       for r in results),
                        f"minus {ref}, per file": " ".join(f"{d:+.2f}" for d in per_file),
                        f"minus {ref}, pooled": pooled["mean"], "95% CI": f"[{pooled['ci'][0]:+.3f}, "
                                                                          f"{pooled['ci'][1]:+.3f}]",
                        "train s": sum(r["cost"][name]["train_s"] for r in results)})
    print(table(summary, ["variant", "mean reward", f"minus {ref}, per file", f"minus {ref}, pooled", "95% CI",
                          "train s"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "variants": variants, "summary": summary, "runs": results,
                               "seconds": time.time() - t0}, indent=2, default=str))
    print(f"wrote {out} in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
