"""How much lift is there to find? The best of N base replies per held-out question, by taste.

A LoRA trained on a few dozen logged replies to other questions reweights what the base model
already says; it does not teach it that Cairo is the capital of Egypt. So the best of N sampled
base replies per held-out question (N large), judged by the population's own taste, bounds the
mean reward any such adapter can reach there. This bench samples N replies per held-out question
from the base model exactly as bench/learning.py's offline judge does (temperature 0.7, top-p
0.9, the same max tokens), judges them with each population's taste, and reports:

    base           the mean reward of one reply (what bench/learning.py's base row estimates)
    best of k      the expected best of k replies per question (unbiased, from the N samples)
    ceiling        best of all N: the mean over questions of the best reply ever seen
    no -1 replies  the mean reward of a policy that never gives a displeasing (-1) reply and
                   otherwise keeps the base model's odds: per question the mean over its
                   replies that are not -1 (a question with only -1 replies stays -1). What
                   learning the taste's form alone reaches, without knowing more answers
    told           the mean reward when the prompt spells the taste out (TOLD: "Answer in one
                   short sentence." and so on), sampled at 0.7 and sharper at 0.3: roughly an
                   adapter that has learned the taste perfectly and grown more sure of its
                   answers, but knows no more answers than the base model
    KTO lift       TRL KTOTrainer's pooled held-out lift in the default's learning runs
                   (bench/results/learning_pop_<pop>_seed<k>_ktobal.json), the aim's yardstick
    1.5x KTO       base + 1.5 x that lift (or base, where KTO's lift is not positive): the mean
                   reward the lift-per-event aim needs on the same data; "ceiling >= it"
                   and "told >= it" say whether those references reach it

    .venv/bin/python bench/headroom.py                        # smollm2, N = 32 per question
    .venv/bin/python bench/headroom.py --model tiny-random --n 4
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from math import comb
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from bench.common import RESULTS, table
from bench.learning import judge, offline_replies
from bench.learning_populations import pool
from bench.populations import HELDOUT, POPULATIONS
from tests.support.processes import MODELS


def expected_best_of(values: np.ndarray, k: int) -> float:
    """E[max of k drawn without replacement from `values`]: the i-th smallest of N is the max of a
    k-subset in C(i-1, k-1) of the C(N, k) subsets."""
    v = np.sort(values)
    n = len(v)
    return float(sum(v[i] * comb(i, k - 1) for i in range(k - 1, n)) / comb(n, k))


# The taste in words, appended to each held-out question: the "told" reference.
TOLD = {"concise": "Answer in one short sentence.", "detailed": "Answer in two or three full sentences.",
        "answer_first": "Start your reply with the answer."}
TOLD_TEMPERATURES = (0.7, 0.3)


def told_scores(args, loaded, pop: str, taste) -> dict:
    """{temperature: mean reward} of --told-n replies per held-out question, the taste in the prompt."""
    questions = [(f"{q} {TOLD[pop]}", a) for q, a in HELDOUT]
    out = {}
    for t in TOLD_TEMPERATURES:
        scores = [judge(taste, offline_replies(args.model, None, len(questions), args.max_new_tokens,
                                               args.seed * 1000 + 500 + j, questions=questions, loaded=loaded,
                                               temperature=t)) for j in range(args.told_n)]
        out[t] = float(np.mean(scores))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=32, help="sampled base replies per held-out question")
    ap.add_argument("--max-new-tokens", type=int, default=40, help="as bench/learning.py's offline judge")
    ap.add_argument("--told-n", type=int, default=8, help="replies per held-out question with the taste spelled out, "
                                                          "at each temperature (0 = skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "headroom.json"))
    args = ap.parse_args(argv)
    from core.modeling import load_model
    loaded = load_model(args.model, MODELS, device="cpu")
    q = len(HELDOUT)
    t0 = time.time()
    samples = []   # N rounds of one reply per held-out question
    for j in range(args.n):
        samples.append(offline_replies(args.model, None, q, args.max_new_tokens, args.seed * 1000 + j, loaded=loaded))
        print(f"\rsampled {j + 1}/{args.n} replies per question ({time.time() - t0:.0f} s)", end="", flush=True)
    print()
    print(f"sampling {2 * args.told_n} replies per question per population with the taste spelled out", flush=True)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= args.n]
    kto_pooled = pool(RESULTS).get("kto", {})   # TRL KTO in the default's runs, paired by question over seeds
    rows, report = [], {}
    for pop, taste in POPULATIONS.items():
        scores = np.array([judge(taste, s) for s in samples]).T          # [Q, N]
        best = {k: float(np.mean([expected_best_of(row, k) for row in scores])) for k in ks}
        ceiling = float(scores.max(1).mean())
        no_bad = float(np.mean([row[row > -1].mean() if (row > -1).any() else -1.0 for row in scores]))
        kto = (kto_pooled.get(pop) or {}).get("lift")
        base = float(scores.mean())
        told = told_scores(args, loaded, pop, taste) if args.told_n else {}
        need = base + 1.5 * max(kto["mean"], 0.0) if kto else None   # KTO at or below base: any lift beats it
        report[pop] = {"base": base, "best_of": best, "ceiling": ceiling, "no_displeasing": no_bad,
                       "told": {str(t): v for t, v in told.items()}, "kto_lift": kto,
                       "needed_for_1_5x_kto": need, "reachable": None if need is None else need <= ceiling,
                       "reachable_by_taste": None if need is None or not told else need <= max(told.values()),
                       "per_question_ceiling": scores.max(1).tolist(), "per_question_mean": scores.mean(1).tolist(),
                       "scores": scores.tolist()}
        rows.append({"population": pop, "base": base, **{f"best of {k}": best[k] for k in ks if k > 1},
                     "ceiling": ceiling, "no -1 replies": no_bad,
                     **{f"told t{t}": v for t, v in told.items()}, "KTO lift": kto and kto["mean"], "1.5x KTO": need,
                     "ceiling >= it": report[pop]["reachable"], "told >= it": report[pop]["reachable_by_taste"]})
    print(table(rows, list(rows[0])))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "args": vars(args), "questions": [x for x, _ in HELDOUT],
                               "populations": report, "seconds": round(time.time() - t0, 1)}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
