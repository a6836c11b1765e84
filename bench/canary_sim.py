"""The live comparison of canaries, simulated: how often it promotes a worse version or rolls back
one that is not worse, and how many rewarded replies a decision takes, per canary share.

Candidates are gate_sim.py's: K replies per prompt with true mean rewards mu ~ U(-0.8, 0.8), the
serving version picks with softmax(b), a candidate tilts it by beta * mu (+ its own noise);
beta spreads the true difference delta (candidate minus serving, exact on the live prompt pool)
over about -0.45 .. +0.45 (BETA_RANGES). Live traffic: each rewarded reply is the canary's with
probability `share`, else the stable's; a reward is +1/-1 with P(+1) = (1 + mu) / 2 (thumbs: the
largest variance a [-1, 1] reward can have, so the slowest case). The stable has `history`
rewarded replies before the canary starts (one round served by it). The monitor looks after
every reward (a small deployment gets less than one reward per 15 s tick), `horizon` rewarded
replies in all, then the run counts as kept.

Rules: the shipped sequential test (worker/ops/sequential.py, SequentialConfig()) and the old
rule it replaced (one-sided Welch test, 50 rewards a side, alpha 0.01, promote when not worse
and the mean is at least the parent's).

    python bench/gate_sim.py --live [--trials 400] [--seed 0] [--out bench/results/canary_sim.json]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from bench.common import table
from bench.gate_sim import K, softmax
from worker.ops.compare import compare_versions
from worker.ops.sequential import KEEP, PROMOTE, ROLLBACK, SequentialConfig, decide

POOL = 400                 # live prompts per candidate
SHARES = (0.1, 0.2, 0.3, 0.5)
HISTORY = 50
HORIZON = 300
# by true delta; a candidate's tilt beta is drawn uniformly within one of five ranges picked at
# random, so that each bin gets about a fifth of the runs (delta saturates near -0.45 / +0.45)
BINS = (("worse by >= 0.3", -9.0, -0.3), ("worse by 0.15-0.3", -0.3, -0.15), ("worse by 0.05-0.15", -0.15, -0.05),
        ("tie (|delta| <= 0.05)", -0.05, 0.05), ("better by > 0.05", 0.05, 9.0))
BETA_RANGES = ((-10.0, -3.0), (-3.0, -1.2), (-1.2, -0.4), (-0.4, 0.4), (0.4, 4.0))


def candidate(rng: np.random.Generator, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    mu = rng.uniform(-0.8, 0.8, size=(POOL, K))                                 # [P, K] true rewards
    b = softmax(rng.normal(0, 1.0, size=(POOL, K)))                             # the stable
    t = softmax(np.log(b) + beta * mu + rng.normal(0, 0.3, size=(POOL, K)))     # the canary
    return mu, b, t, float(np.mean((t * mu).sum(-1)) - np.mean((b * mu).sum(-1)))


def rewards(rng: np.random.Generator, mu: np.ndarray, policy: np.ndarray, n: int) -> np.ndarray:
    """n rewarded replies of `policy` on random live prompts: +1/-1."""
    prompts = rng.integers(POOL, size=n)
    cum = policy[prompts].cumsum(-1)                                             # [n, K]
    k = np.minimum((rng.random((n, 1)) > cum).sum(-1), K - 1)
    return np.where(rng.random(n) < (1 + mu[prompts, k]) / 2, 1.0, -1.0)


def welch_rule(new: list[float], base: list[float]) -> str:
    """The monitor's old rule: Welch one-sided, min 50 a side, alpha 0.01, min effect 0.05."""
    result = compare_versions(base, new, min_samples=50, alpha=0.01, min_effect=0.05)
    if result.alarm:
        return ROLLBACK
    if len(new) >= 50 and len(base) >= 50 and np.mean(new) >= np.mean(base):
        return PROMOTE
    return KEEP


def draw_beta(rng: np.random.Generator) -> float:
    lo, hi = BETA_RANGES[rng.integers(len(BETA_RANGES))]
    return float(rng.uniform(lo, hi))


def run(rng: np.random.Generator, mu: np.ndarray, b: np.ndarray, t: np.ndarray, share: float, rule
        ) -> tuple[str, int, int]:
    """(decision, canary rewards, all rewards since the canary started) of one live run."""
    is_canary = rng.random(HORIZON) < share
    new_stream = list(rewards(rng, mu, t, int(is_canary.sum())))
    old_stream = list(rewards(rng, mu, b, HISTORY + int((~is_canary).sum())))
    new, base = [], old_stream[:HISTORY]
    i_new, i_old = 0, HISTORY
    for step, canary in enumerate(is_canary):
        if canary:
            new.append(new_stream[i_new])
            i_new += 1
        else:
            base.append(old_stream[i_old])
            i_old += 1
        verdict = rule(new, base)
        if verdict != KEEP:
            return verdict, len(new), step + 1
    return KEEP, len(new), HORIZON


def summarize(runs: list[tuple[float, str, int, int]]) -> list[dict]:
    rows = []
    for name, lo, hi in BINS:
        sel = [r for r in runs if lo < r[0] <= hi]
        if not sel:
            continue
        decided = [r for r in sel if r[1] != KEEP]
        pick = lambda i, f: float(f([r[i] for r in decided])) if decided else None
        rows.append({"true delta": name, "runs": len(sel),
                     "promote": sum(r[1] == PROMOTE for r in sel) / len(sel),
                     "rollback": sum(r[1] == ROLLBACK for r in sel) / len(sel),
                     "kept at horizon": sum(r[1] == KEEP for r in sel) / len(sel),
                     "canary rewards mean": pick(2, np.mean), "canary rewards p90": pick(2, lambda a: np.percentile(a, 90)),
                     "all rewards mean": pick(3, np.mean), "all rewards p90": pick(3, lambda a: np.percentile(a, 90))})
    return rows


def headline(rows: list[dict]) -> dict:
    """false promote: promoted while worse by 0.3 or more; false rollback: rolled back while a tie or better."""
    def rate(names, col):
        sel = [r for r in rows if r["true delta"] in names]
        n = sum(r["runs"] for r in sel)
        return sum(r[col] * r["runs"] for r in sel) / n if n else None
    worse, fine = [BINS[0][0]], [n for n, _, _ in BINS[3:]]
    ties = next((r for r in rows if r["true delta"].startswith("tie")), {})
    return {"false_promote": rate(worse, "promote"), "false_rollback": rate(fine, "rollback"),
            "tie_decided": 1 - ties.get("kept at horizon", 1.0),
            "tie_all_rewards_mean": ties.get("all rewards mean"), "tie_canary_rewards_mean": ties.get("canary rewards mean"),
            "worse_canary_rewards_mean": rows[0]["canary rewards mean"] if rows[0]["true delta"] == BINS[0][0] else None}


def main(trials: int = 400, seed: int = 0, out: str | None = None) -> int:
    cfg = SequentialConfig()
    rules = {"sequential (default)": lambda new, base: decide(new, base, cfg).decision,
             "old: Welch, 50 a side": welch_rule}
    started = time.time()
    report = {"trials": trials, "seed": seed, "history": HISTORY, "horizon": HORIZON, "pool": POOL,
              "config": cfg.__dict__, "results": []}
    for rule_name, rule in rules.items():
        for share in SHARES:
            rng = np.random.default_rng([seed, int(share * 100)])   # the same candidates for every rule
            runs = []
            for _ in range(trials):
                mu, b, t, delta = candidate(rng, draw_beta(rng))
                decision, n_new, n_all = run(rng, mu, b, t, share, rule)
                runs.append((delta, decision, n_new, n_all))
            rows = summarize(runs)
            report["results"].append({"rule": rule_name, "share": share, "rows": rows, **headline(rows)})
            print(f"\n{rule_name}, canary share {share:g} ({HISTORY} stable rewards before, looks after every "
                  f"reward, horizon {HORIZON}):")
            print(table(rows, list(rows[0])))
    summary = [{"rule": r["rule"], "share": r["share"], "false promote (worse by >=0.3)": r["false_promote"],
                "false rollback (tie or better)": r["false_rollback"],
                f"ties decided within {HORIZON}": r["tie_decided"], "tie: all rewards to decide": r["tie_all_rewards_mean"],
                "tie: canary rewards": r["tie_canary_rewards_mean"],
                "worse by >=0.3: canary rewards to decide": r["worse_canary_rewards_mean"]} for r in report["results"]]
    print("\nsummary\n" + table(summary, list(summary[0])))
    report["summary"] = summary
    report["seconds"] = round(time.time() - started, 1)
    path = Path(out or Path(__file__).parent / "results" / "canary_sim.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path} ({report['seconds']} s)")
    return 0
