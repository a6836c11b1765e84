"""How well each quality scorer orders a labelled set, and what scoring costs.

The set (bench/data/quality_pairs.json, written for rewardloop): per component, the same prompt
with a better and a worse reply -- safe vs insulting or abusive (safety), the answer vs the answer
to another question of the set (relevance), the answer vs its words shuffled or a hand-written
disfluent one (fluency). A pair is ordered correctly when the better reply scores higher
(relevance, fluency) or less unsafe (safety). The aim is >= 90 % per component with the default
scorers: the default model (SmolLM2-135M-Instruct) for relevance and fluency, alt-profanity-check
for safety.

Cost: seconds per reply of each scorer in this process (the model's scoring is two forward passes
over the reply, batched 8 rows a pass), and `rewardloop rewards score` end to end on 200 lines
(model load included) as a subprocess.

    .venv/bin/python bench/quality.py                      # table, bench/results/quality.json
    .venv/bin/python bench/quality.py --model tiny-random --skip-cli
    .venv/bin/python bench/quality.py --cli-only --cli-reply-words 45 --out /tmp/q.json   # longer replies
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout
SET = REPO / "bench" / "data" / "quality_pairs.json"


def load_pairs() -> list[dict]:
    return json.loads(SET.read_text())["pairs"]


def score_set(pairs: list[dict], model: str, models_dir: Path, safety_spec: str) -> tuple[list[dict], dict]:
    """Each pair with its scores, and the cost per reply of each scorer."""
    from core.modeling import load_model
    from core.quality import score_pairs
    from core.safety import load_safety_scorer
    lm = load_model(model, models_dir, "cpu")
    safety = load_safety_scorer(safety_spec)
    safety.unsafe_probability(["warm up"])          # the classifier's one-off load is not a per-reply cost
    texts = [(p["prompt"], p[side]) for p in pairs for side in ("good", "bad")]
    t = time.perf_counter()
    base = score_pairs(lm.model, lm.tokenizer, texts, lm.device)
    base_s = time.perf_counter() - t
    t = time.perf_counter()
    unsafe = safety.unsafe_probability([r for _, r in texts], [q for q, _ in texts])
    safety_s = time.perf_counter() - t
    out = []
    for i, p in enumerate(pairs):
        g, b = base[2 * i], base[2 * i + 1]
        out.append({**p, "good_scores": {"pmi": g.pmi, "logprob": g.logprob, "unsafe": unsafe[2 * i]},
                    "bad_scores": {"pmi": b.pmi, "logprob": b.logprob, "unsafe": unsafe[2 * i + 1]}})
    cost = {"replies": len(texts), "base_model_s_per_reply": base_s / len(texts),
            "safety_s_per_reply": safety_s / len(texts), "model": lm.model_id, "safety_scorer": safety.name}
    return out, cost


KEY = {"relevance": ("pmi", 1), "fluency": ("logprob", 1), "safety": ("unsafe", -1)}


def accuracy(scored: list[dict]) -> dict:
    """Per component: pairs, correctly ordered share, the mean score of the better and worse replies."""
    table = {}
    for comp, (key, sign) in KEY.items():
        rows = [p for p in scored if p["component"] == comp]
        good = [p["good_scores"][key] for p in rows]
        bad = [p["bad_scores"][key] for p in rows]
        right = [sign * (g - b) > 0 for g, b in zip(good, bad)]
        table[comp] = {"pairs": len(rows), "correct": sum(right), "accuracy": sum(right) / len(rows),
                       "score": key, "mean_good": statistics.fmean(good), "mean_bad": statistics.fmean(bad),
                       "wrong": [{"prompt": p["prompt"], "good": p["good"], "bad": p["bad"]}
                                 for p, ok in zip(rows, right) if not ok][:10]}
    return table


def cli_lines(n: int, reply_words: int = 0) -> list[dict]:
    """n distinct (prompt, reply) lines of the set, each with a thumbs up (cycled when n is larger);
    reply_words > 0: each reply is the set's replies joined to about that many words (timing only)."""
    seen, lines = set(), []
    for p in load_pairs():
        for side in ("good", "bad"):
            if (p["prompt"], p[side]) not in seen:
                seen.add((p["prompt"], p[side]))
                lines.append({"prompt": p["prompt"], "reply": p[side], "signals": {"thumbs": 1}})
    lines = [dict(x) for x in (lines * (n // len(lines) + 1))[:n]]
    if reply_words:
        replies = [x["reply"] for x in lines]
        for i, x in enumerate(lines):
            joined, k = [], 0
            while len(joined) < reply_words:
                joined += replies[(i + k * 37) % len(replies)].split()
                k += 1
            x["reply"] = " ".join(joined)
    return lines


def cli_run(model: str, n: int, env_extra: dict, reply_words: int = 0) -> dict:
    """`rewardloop rewards score --json` on n lines (cli_lines), timed end to end as a subprocess."""
    from core.modeling import resolve_model_path
    from core.quality import calibration_path
    lines = cli_lines(n, reply_words)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    models_dir = Path(env.get("REWARDLOOP_MODEL_CACHE") or REPO / "var" / "models")
    calibrated = calibration_path(models_dir, resolve_model_path(model, models_dir)[1]).exists()
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "service.cli", "rewards", "score", f.name, "--json", "--model", model],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t
    os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(f"rewards score failed: {out.stderr[-2000:]}")
    rows = [json.loads(x) for x in out.stdout.splitlines() if x.strip()]
    assert len(rows) == n, (len(rows), n)
    summary = [x for x in out.stderr.splitlines() if "scored in" in x]
    return {"lines": n, "wall_s": wall, "calibration_cached": calibrated,
            "reply_words": statistics.fmean(len(x["reply"].split()) for x in lines),
            "scored_tokens": statistics.fmean(r.get("scored_tokens", 0) for r in rows),
            "threads": env.get("OMP_NUM_THREADS", "default"), "cli_summary": summary[-1] if summary else ""}


def print_table(table: dict, cost: dict) -> None:
    print(f"{'component':<10} {'pairs':>5} {'correct':>7} {'accuracy':>8}  score      mean good   mean bad")
    for comp, row in table.items():
        print(f"{comp:<10} {row['pairs']:>5} {row['correct']:>7} {row['accuracy']:>8.1%}  {row['score']:<9} "
              f"{row['mean_good']:>9.3f}  {row['mean_bad']:>9.3f}")
    print(f"cost per reply: base-model scoring {cost['base_model_s_per_reply'] * 1000:.1f} ms, "
          f"safety ({cost['safety_scorer']}) {cost['safety_s_per_reply'] * 1000:.3f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="base model for relevance and fluency (default smollm2)")
    ap.add_argument("--safety-model", default="", help="REWARDLOOP_SAFETY_MODEL (default: alt-profanity-check)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    ap.add_argument("--cli-lines", type=int, default=200, help="lines for the `rewards score` timing (default 200)")
    ap.add_argument("--skip-cli", action="store_true", help="do not time `rewardloop rewards score`")
    ap.add_argument("--cli-only", action="store_true", help="only time `rewardloop rewards score` (no set scoring)")
    ap.add_argument("--cli-reply-words", type=int, default=0,
                    help="replies of about this many words for the timing (default 0: the set's, ~9 words)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "quality.json")
    args = ap.parse_args()
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    models_dir = REPO / "var" / "models"
    t0 = time.time()
    result = {"threads": torch.get_num_threads(), "load_avg_at_start": os.getloadavg(),
              "note": "2-core machine shared with other jobs: absolute times are upper bounds"}
    table = {}
    if not args.cli_only:
        scored, cost = score_set(load_pairs(), args.model, models_dir, args.safety_model)
        table = accuracy(scored)
        print_table(table, cost)
        result.update({"model": cost["model"], "safety_scorer": cost["safety_scorer"], "components": table,
                       "cost": cost, "set": str(SET.relative_to(REPO))})
    if not args.skip_cli:
        env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
        cli = result["rewards_score_cli"] = cli_run(args.model, args.cli_lines, env, args.cli_reply_words)
        print(f"rewardloop rewards score: {args.cli_lines} lines of ~{cli['reply_words']:.0f} words "
              f"({cli['scored_tokens']:.0f} tokens) in {cli['wall_s']:.1f} s, model load included, calibration "
              f"{'cached' if cli['calibration_cached'] else 'computed (first run)'}\n  {cli['cli_summary']}")
    result["seconds"] = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0 if all(row["accuracy"] >= 0.9 for row in table.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
