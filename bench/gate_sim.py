"""How often does the gate decide wrong? Adapters of known quality on simulated logs.

Each held-out prompt has K possible replies with true mean rewards mu (uniform in [-0.8, 0.8]);
the serving version (behavior) picks reply k with softmax(b); a logged reward is +1/-1 with
P(+1) = (1 + mu) / 2. A candidate adapter tilts the behavior by `beta * mu` (beta > 0: better,
< 0: worse) plus random noise of its own; its true value is known exactly, so every decision
can be scored:

    false reject   the candidate is better than the serving version by > 0.05, and rejected
    false accept   it is worse by > 0.05, and published as *stable* without a canary phase
    canary         published as canary: the live comparison (and automatic rollback) decides

The decision is learner.gate.decide (the gate's own rule) on SNIPS and on a doubly-robust
estimate (a reward model with noise sd 0.3 around mu), for several held-out sizes, with the
default ESS floor (TrainConfig.gate.cf_min_ess) and without one (the old rule: pass with a warning).

--live: what happens to a canary next (bench/canary_sim.py): the same simulated candidates
serve a share of live replies, and the live comparison (worker/ops/sequential.py, the test the
ops monitor runs) promotes, keeps or rolls them back; false-promote and false-rollback rates
and the rewarded replies each decision took, per canary share.

    python bench/gate_sim.py [--trials 400] [--out bench/results/gate_sim.json]
    python bench/gate_sim.py --live [--trials 400] [--out bench/results/canary_sim.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import table
from learner import counterfactual
from learner.config import TrainConfig
from learner.gate import decide

K = 4
QUALITY_BAND = 0.05


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def trial(rng, n: int, beta: float, cfg: TrainConfig, method: str) -> tuple[str, float]:
    mu = rng.uniform(-0.8, 0.8, size=(n, K))                                 # [N, K] true rewards
    b = softmax(rng.normal(0, 1.0, size=(n, K)))                              # behavior policy
    t = softmax(np.log(b) + beta * mu + rng.normal(0, 0.3, size=(n, K)))      # candidate policy
    a = np.array([rng.choice(K, p=row) for row in b])                         # logged replies
    r = np.where(rng.random(n) < (1 + mu[np.arange(n), a]) / 2, 1.0, -1.0)    # logged rewards
    delta = float(np.mean((t * mu).sum(-1)) - np.mean((b * mu).sum(-1)))      # truth: new - serving
    lb, lt = np.log(b[np.arange(n), a]), np.log(t[np.arange(n), a])
    new = counterfactual.estimate(r, lt, lb, min_ess=cfg.gate.cf_min_ess, n_boot=50)
    old = counterfactual.estimate(r, lb, lb, min_ess=cfg.gate.cf_min_ess, n_boot=50)
    if method == "snips":
        new_v, old_v = new.snips, old.snips
    else:
        q = mu + rng.normal(0, 0.3, size=(n, K))                             # an imperfect reward model
        w = counterfactual.importance_weights(lt, lb)
        new_v, _ = counterfactual.doubly_robust(r, w, q[np.arange(n), a], (t * q).sum(-1), n_boot=10)
        old_v, _ = counterfactual.doubly_robust(r, np.ones(n), q[np.arange(n), a], (b * q).sum(-1), n_boot=10)
    passed, canary, _ = decide(new_v, old_v, new.ess, cfg, method)
    return ("canary" if canary else "published" if passed else "rejected"), delta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=400, help="simulated candidates per setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON (default bench/results/gate_sim.json, with --live "
                                               "bench/results/canary_sim.json)")
    p.add_argument("--live", action="store_true", help="simulate the live comparison of canaries instead")
    args = p.parse_args(argv)
    if args.live:
        from bench.canary_sim import main as live_main
        return live_main(args.trials, args.seed, args.out)
    args.out = args.out or str(Path(__file__).parent / "results" / "gate_sim.json")
    rng = np.random.default_rng(args.seed)
    default = TrainConfig()
    no_floor = dataclasses.replace(default, gate=dataclasses.replace(default.gate, cf_min_ess=0.0))
    rules = {"ESS floor (default)": default, "no floor (old rule)": no_floor}
    rows = []
    for n in (8, 32, 128, 512):
        for rule, cfg in rules.items():
            for method in ("snips", "doubly_robust"):
                counts = {"better": 0, "worse": 0, "false_reject": 0, "false_accept": 0, "canary": 0}
                for _ in range(args.trials):
                    beta = rng.choice([-3.0, -1.5, 1.5, 3.0])
                    decision, delta = trial(rng, n, beta, cfg, method)
                    counts["canary"] += decision == "canary"
                    if delta > QUALITY_BAND:
                        counts["better"] += 1
                        counts["false_reject"] += decision == "rejected"
                    elif delta < -QUALITY_BAND:
                        counts["worse"] += 1
                        counts["false_accept"] += decision == "published"
                rows.append({"held-out replies": n, "rule": rule, "estimate": method,
                             "false reject": counts["false_reject"] / max(counts["better"], 1),
                             "false accept (as stable)": counts["false_accept"] / max(counts["worse"], 1),
                             "canary": counts["canary"] / args.trials, "better": counts["better"],
                             "worse": counts["worse"]})
    cols = ["held-out replies", "rule", "estimate", "false reject", "false accept (as stable)", "canary",
            "better", "worse"]
    print(table(rows, cols))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"trials": args.trials, "seed": args.seed, "cf_margin": default.gate.cf_margin,
                               "cf_min_ess": default.gate.cf_min_ess, "quality_band": QUALITY_BAND, "rows": rows},
                              indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
