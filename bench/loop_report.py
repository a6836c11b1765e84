"""Tables and the chart of the closed-loop bench (bench/loop.py): one run's table, and over all
result files (bench/results/loop_<population>_seed<k>.json) a pooled table per population --
held-out lift of the newest served version after the last round (paired, pooled over seeds),
round 3 minus round 1, chat tokens/s and TTFT p95 while the learner trains vs idle, learner
seconds per sample and peak RSS, TRL KTO's lift on the same data -- as JSON and a PNG.

    .venv/bin/python bench/loop_report.py [--glob 'loop_*_seed*.json'] [--out bench/results/loop_pooled.json]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from bench.common import table
from bench.learning import mean_ci
from bench.learning_chart import png_chart
from bench.loop_eval import lift_line

RESULTS = Path(__file__).parent / "results"
NAME = re.compile(r"loop_(?P<pop>[a-z_0-9]+?)_seed(?P<seed>\d+)(?P<tag>_[a-z0-9]+)?\.json$")
BLUE, ORANGE, GREY, GREEN = (74, 123, 208), (230, 140, 40), (150, 150, 150), (60, 160, 90)


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def print_run(rep: dict) -> None:
    held = rep.get("heldout") or {}
    rows = []
    for rd, lift in zip(rep["rounds"], held.get("per_round", [])):
        rows.append({"round": rd["round"], "run": f"{rd['state']} v{rd.get('version') or '-'}",
                     "serves": rd["newest_served"], "replies": rd["replies_before"], "wall s": round(rd["wall_s"]),
                     "run s": round(rd["run_s"]) if rd.get("run_s") else None,
                     "held-out lift vs base [95% CI]": lift_line(lift["lift"]),
                     "P[unsafe] vs base": lift_line(lift["unsafe_change"]) if lift.get("unsafe_change") else None})
    print(f"\n{rep['mix']} seed {rep['args']['seed']}: {rep['replies']} replies, loop {rep['wall_s'] / 60:.1f} min")
    if rows:
        print(table(rows, list(rows[0])))
    else:
        print("no learner run committed")
    if held.get("round3_minus_round1"):
        d = held["round3_minus_round1"]
        print(f"round {d['rounds'][1]} minus round 1 (v{d['versions'][1]} - v{d['versions'][0]}): {lift_line(d['difference'])}")
    for name, lift in (held.get("extra") or {}).items():
        print(f"{name} (TRL KTOTrainer, same rewarded replies) vs base: {lift_line(lift)}")
    for run in (rep.get("learner_s_per_sample") or {}).get("runs", []):
        pr = run.get("probe")
        if pr and pr.get("unsafe_new") is not None:
            print(f"safety probe v{run['version']} ({pr['decision']}): unsafe {pr['unsafe_new']:.3f} vs parent "
                  f"{pr['parent']} {pr['unsafe_parent']:.3f} (n {pr['n']}, p {_f(pr.get('p_value'))})")
        elif pr:
            print(f"safety probe v{run['version']}: {pr['decision']} ({pr.get('reason')})")
    sf = rep.get("safety")
    if sf:
        print(f"unsafe replies (server's P[unsafe] >= {sf['threshold']}): {sf['unsafe']} of {sf['scored']} scored, "
              f"{sf['upvoted_unsafe']} thumbed up, {sf['vetoed']} vetoed in the ledger, final rewards of the upvoted "
              f"ones {[round(x, 2) for x in sf['upvoted_unsafe_rewards']]}; users down-weighted {sf['down_weighted_users']} "
              f"(as unsafe voters {sf['unsafe_voters']})")
    v = rep["versions"]
    print(f"versions: {v['published']} published, {v['rejected']} rejected, {v['promoted']} promoted, "
          f"{v['rolled_back']} rolled back (by the live comparison: {v['promoted_by_monitor']} / {v['rolled_back_by_monitor']})")
    c = rep["chat"]
    for s in ("idle", "training"):
        print(f"chat, learner {s:<8}: server {_f(c[s]['server_tokens_per_busy_s'], '{:.1f}')} tokens/busy s, "
              f"{_f(c[s]['stream_tokens_per_s'], '{:.1f}')} tokens/s per stream, TTFT p50 {_f(c[s]['ttft_p50'])} s "
              f"p95 {_f(c[s]['ttft_p95'])} s ({c[s]['turns']} turns)")
    r = c["training_vs_idle"]
    print(f"training / idle: {_f(r['server_tokens_per_busy_s'])}x (server tokens per busy s), "
          f"{_f(r['stream_tokens_per_s'])}x (per stream); learner {_f(rep['learner_s_per_sample']['run_s_per_sample'], '{:.1f}')} "
          f"s per sample, peak RSS {rep['learner_rss_peak_gb']:.2f} GB")


def pool(files: list[Path]) -> dict:
    """{population: {seeds, final lift (pooled paired diffs), round 3 - 1, chat, cost, kto}}"""
    acc: dict = {}
    for path in files:
        m = NAME.search(path.name)
        if not m or m["pop"].startswith("quick"):
            continue
        rep = json.loads(path.read_text())
        held = rep.get("heldout") or {}
        scores, judge = held.get("scores") or {}, held.get("judge")
        cell = acc.setdefault(m["pop"] + (m["tag"] or ""), {"seeds": [], "final": [], "r31": [], "kto": [], "runs": []})
        cell["seeds"].append(int(m["seed"]))
        last = rep["rounds"][-1]["newest_served"] if rep["rounds"] else "base"
        base = scores.get("base", {}).get(judge, [])
        cell["final"] += [a - b for a, b in zip(scores.get(last, {}).get(judge, base), base)]
        d = held.get("round3_minus_round1")
        if d and d["rounds"][1] == 3:
            v1, v3 = d["versions"]
            cell["r31"] += [a - b for a, b in zip(scores[v3][judge], scores[v1][judge])]
        if "kto" in scores:
            cell["kto"] += [a - b for a, b in zip(scores["kto"][judge], base)]
        cell["runs"].append(rep)
    out = {}
    for pop, c in acc.items():
        runs = c["runs"]
        ratio = [r["chat"]["training_vs_idle"]["server_tokens_per_busy_s"] for r in runs]
        p95 = [r["chat"]["training"]["ttft_p95"] for r in runs]
        out[pop] = {"seeds": sorted(c["seeds"]), "final_lift": mean_ci(c["final"]), "round3_minus_round1": mean_ci(c["r31"]),
                    "kto_lift": mean_ci(c["kto"]), "replies": [r["replies"] for r in runs],
                    "wall_min": [round(r["wall_s"] / 60, 1) for r in runs],
                    "chat_training_vs_idle": ratio, "ttft_p95_training_s": p95,
                    "ttft_p95_idle_s": [r["chat"]["idle"]["ttft_p95"] for r in runs],
                    "learner_s_per_sample": [r["learner_s_per_sample"]["run_s_per_sample"] for r in runs],
                    "learner_rss_peak_gb": [round(r["learner_rss_peak_gb"], 2) for r in runs],
                    "versions": [{k: r["versions"][k] for k in ("published", "rejected", "promoted", "rolled_back")}
                                 for r in runs],
                    "per_seed_final": [(r["heldout"]["per_round"] or [{"lift": None}])[-1]["lift"] for r in runs]}
    return out


def chart(pooled: dict, path: Path) -> None:
    def bar(name, colour, cell):
        return {"name": name, "colour": colour, "mean": cell.get("mean"), "ci": cell.get("ci", [None, None])}
    lift = []
    for pop, c in pooled.items():
        lift.append(bar(pop[:10], BLUE, c["final_lift"]))
        if c["kto_lift"]["n"]:
            lift.append(bar("kto", ORANGE, c["kto_lift"]))
    r31 = [bar(pop[:10], GREEN, c["round3_minus_round1"]) for pop, c in pooled.items()]
    ratio = [{"name": pop[:10], "colour": BLUE, "mean": mean_ci([x for x in c["chat_training_vs_idle"] if x])["mean"],
              "ci": [None, None]} for pop, c in pooled.items()]
    scale = lambda bars: max([abs(x) for b in bars for x in [b["mean"], *b["ci"]] if x is not None] + [1e-9])
    png_chart(path, [{"title": "held-out lift over base after the last round (paired 95% CI); orange: TRL KTO",
                      "bars": lift, "scale": scale(lift)},
                     {"title": "round 3 minus round 1 (paired 95% CI)", "bars": r31, "scale": scale(r31)},
                     {"title": "chat tokens/s while training / idle", "bars": ratio, "scale": 1.0}])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--glob", default="loop_*_seed*.json")
    p.add_argument("--out", default=str(RESULTS / "loop_pooled.json"))
    p.add_argument("--png", default=str(RESULTS / "loop.png"))
    args = p.parse_args(argv)
    pooled = pool(sorted(RESULTS.glob(args.glob)))
    rows = [{"population": pop, "seeds": ",".join(map(str, c["seeds"])), "lift after last round": lift_line(c["final_lift"]),
             "round 3 - round 1": lift_line(c["round3_minus_round1"]), "TRL KTO lift": lift_line(c["kto_lift"]),
             "replies": "/".join(map(str, c["replies"])), "loop min": "/".join(map(str, c["wall_min"])),
             "chat training/idle": "/".join(_f(x) for x in c["chat_training_vs_idle"]),
             "TTFT p95 training s": "/".join(_f(x) for x in c["ttft_p95_training_s"]),
             "learner s/sample": "/".join(_f(x, "{:.1f}") for x in c["learner_s_per_sample"]),
             "peak RSS GB": "/".join(map(str, c["learner_rss_peak_gb"]))} for pop, c in pooled.items()]
    if rows:
        print(table(rows, list(rows[0])))
    Path(args.out).write_text(json.dumps(pooled, indent=2, default=str))
    if pooled:
        chart(pooled, Path(args.png))
    print(f"wrote {args.out} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
