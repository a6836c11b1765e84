"""Does serving-time reranking (REWARDLOOP_RERANK_N) help on questions never trained on?

For each population and seed, with the base model alone (no adapter):
  1. label      sampled replies to the TRAIN questions, each labelled liked = the population's
                hidden taste gives it +1 (what the ledger's `liked` is: final reward > 0);
  2. fit        the learner's reward model on them (learner/reward_model.fit: logistic heads on
                the frozen base model's features, its own held-out split for AUROC);
  3. rerank     N sampled candidates per HELD-OUT question (seeds seed, seed+1, ...), scored
                by that reward model exactly as the server scores them (extract_features +
                P[liked]); the best one is "reranked", candidate 0 is what N = 1 serves.
Reported: the paired lift of reranked over N = 1 (95% CI, judged by the same taste), the best
of N by the taste itself (an upper bound no reward model can pass), and the reward model's
AUROC on the held-out questions' candidates (new questions: does the model carry over?).
The labels come from the taste directly, not through simulated users and the ledger: this
measures the reranker given a reward model, not the loop that trains one (bench/learning.py).

    .venv/bin/python bench/rerank.py                                  # smollm2, 3 populations x 2 seeds
    .venv/bin/python bench/rerank.py --model tiny-random --train-replies 32 --eval 8 --seeds 0
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from bench.common import table
from bench.learning import judge, mean_ci, offline_replies
from bench.populations import POPULATIONS, TRAIN
from tests.support.processes import MODELS


def rerank_lift(loaded, rm, taste, n_eval: int, n: int, max_new_tokens: int, seed: int,
                model_name: str = "smollm2") -> dict:
    """Held-out lift of reranking N candidates of `loaded` (the base model, or a LoadedModel whose
    model is a PeftModel: an adapter) with reward model `rm` over serving one (candidate 0),
    paired by question; plus the best of N by the taste and rm's AUROC there. The reward model
    reads base features either way (extract_features disables an adapter), as a server's does."""
    from learner.reward_model import auroc, extract_features
    cands = [offline_replies(model_name, None, n_eval, max_new_tokens, seed * 100 + j, loaded=loaded,
                             with_ids=True) for j in range(n)]
    scores = np.array([judge(taste, [r[:3] for r in c]) for c in cands])                      # [N, Q]
    probs = np.array([rm.predict(extract_features(loaded.model, [(r[3], r[4]) for r in c], "cpu"))
                      for c in cands])                                                        # [N, Q]
    reranked, plain = scores[probs.argmax(0), np.arange(n_eval)], scores[0]
    return {"n": n, "plain": mean_ci(plain.tolist()), "reranked": mean_ci(reranked.tolist()),
            "lift": mean_ci((reranked - plain).tolist()), "oracle_lift": mean_ci((scores.max(0) - plain).tolist()),
            "rm_auroc_heldout_questions": auroc(probs.ravel(), (scores.ravel() > 0).astype(int)),
            "diffs": (reranked - plain).tolist(), "plain_scores": plain.tolist(), "reranked_scores": reranked.tolist()}


def loop_rerank(model_name: str, data_dir, taste, n_eval: int, n: int, max_new_tokens: int, seed: int,
                adapter_dir: Path | None = None) -> dict:
    """bench/learning.py --rerank-n: the same measure with the reward model the loop itself
    trained from the simulated users' signals (DATA_DIR/reward_model), trusted or not; on the
    candidates of the base model, or of the adapter in `adapter_dir` (reranking on top of it)."""
    import dataclasses

    from core.modeling import load_model
    from learner.reward_model import RewardModel
    if n < 2:
        return {"skipped": "--rerank-n below 2"}
    rm = RewardModel.load(Path(data_dir))
    if rm is None:
        return {"skipped": "the learner trained no reward model (fewer labelled replies than it needs)"}
    loaded = load_model(model_name, MODELS, device="cpu")   # fresh: PEFT wraps the model in place
    if adapter_dir is not None:
        from peft import PeftModel
        loaded = dataclasses.replace(loaded, model=PeftModel.from_pretrained(loaded.model, str(adapter_dir)).eval())
    out = rerank_lift(loaded, rm, taste, n_eval, n, max_new_tokens, seed, model_name)
    return {"trusted": rm.metrics.get("trusted"), "rm_n_train": rm.metrics.get("n_train"),
            "rm_auroc_own_holdout": (rm.metrics.get("liked") or {}).get("auroc"), **out}


def loop_rerank_both(args, data_dir, taste, version: str | None, adapter_dir: Path | None) -> dict:
    """bench/learning.py: loop_rerank on base, and on top of the newest adapter (do the two gains
    add up?), printed; the adapter's reranked replies are also paired with base's plain ones."""
    rerank = loop_rerank(args.model, data_dir, taste, args.eval, args.rerank_n, args.max_new_tokens, args.seed)
    if version is not None and "lift" in rerank:
        on = rerank["on_adapter"] = {"version": version, **loop_rerank(
            args.model, data_dir, taste, args.eval, args.rerank_n, args.max_new_tokens, args.seed, adapter_dir)}
        if "lift" in on:
            on["lift_over_base"] = mean_ci([a - b for a, b in zip(on["reranked_scores"], rerank["plain_scores"])])
    for what, res in (("base", rerank), (f"v{version}", rerank.get("on_adapter") or {})):
        if "lift" in res:
            print(f"rerank {what} x{args.rerank_n} with the loop's reward model (trusted: {res['trusted']}): lift "
                  f"over {what} alone {res['lift']['mean']:+.3f} [{res['lift']['ci'][0]:+.3f}, "
                  f"{res['lift']['ci'][1]:+.3f}]" + (f"; over base alone {res['lift_over_base']['mean']:+.3f} "
                                                    f"[{res['lift_over_base']['ci'][0]:+.3f}, "
                                                    f"{res['lift_over_base']['ci'][1]:+.3f}]"
                                                    if "lift_over_base" in res else ""), flush=True)
    return rerank


def one(loaded, taste, seed: int, args) -> dict:
    from learner.reward_model import SIGNALS, extract_features, fit
    t0 = time.time()
    train = offline_replies(args.model, None, args.train_replies, args.max_new_tokens, 10_000 + seed,
                            questions=TRAIN, loaded=loaded, with_ids=True)
    liked = np.array([int(s > 0) for s in judge(taste, [r[:3] for r in train])])
    feats = extract_features(loaded.model, [(r[3], r[4]) for r in train], "cpu")
    labels = {s: (liked if s == "liked" else np.zeros_like(liked)) for s in SIGNALS}
    rm = fit(feats, labels, [f"t{i}" for i in range(len(train))], base_model=loaded.model_id)
    out = rerank_lift(loaded, rm, taste, args.eval, args.n, args.max_new_tokens, seed, args.model)
    return {"population": taste.name, "seed": seed, "train_liked_rate": float(liked.mean()),
            "rm_auroc_own_holdout": rm.metrics["liked"]["auroc"], **out, "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--populations", default=",".join(POPULATIONS), help="comma-separated (default: all)")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    ap.add_argument("--train-replies", type=int, default=192, help="labelled replies the reward model learns from")
    ap.add_argument("--eval", type=int, default=48, help="held-out questions (cycled) per run")
    ap.add_argument("--n", type=int, default=4, help="candidates per question (REWARDLOOP_RERANK_N)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--out", default="bench/results/rerank.json")
    args = ap.parse_args(argv)
    from core.modeling import load_model
    loaded = load_model(args.model, MODELS, device="cpu")
    runs = []
    for pop in args.populations.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            runs.append(one(loaded, POPULATIONS[pop], seed, args))
            r = runs[-1]
            print(f"{pop} seed {seed}: lift {r['lift']['mean']:+.3f} [{r['lift']['ci'][0]:+.3f}, "
                  f"{r['lift']['ci'][1]:+.3f}]  AUROC {r['rm_auroc_heldout_questions']}  ({r['seconds']} s)",
                  flush=True)
    pooled = {}
    for pop in dict.fromkeys(r["population"] for r in runs):
        mine = [r for r in runs if r["population"] == pop]
        # per-question differences of every seed together: one paired interval per population
        diffs = [d for r in mine for d in r["diffs"]]
        pooled[pop] = {"lift_mean_over_seeds": float(np.mean([r["lift"]["mean"] for r in mine])),
                       "runs_with_ci_above_zero": sum(r["lift"]["ci"][0] > 0 for r in mine), "runs": len(mine),
                       "pooled": mean_ci(diffs)}
    rows = [{"population": r["population"], "seed": r["seed"], "N=1": r["plain"]["mean"],
             f"reranked N={args.n}": r["reranked"]["mean"], "lift": r["lift"]["mean"],
             "lift 95% CI": f"[{r['lift']['ci'][0]:+.2f}, {r['lift']['ci'][1]:+.2f}]",
             "best of N (taste)": r["oracle_lift"]["mean"], "RM AUROC new q": r["rm_auroc_heldout_questions"]}
            for r in runs]
    print(table(rows, list(rows[0])))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "args": vars(args), "runs": runs, "pooled": pooled},
                                         indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
