"""Pool the per-population learning runs (`bench/learning.py --population P --seed K`) by
objective: the held-out lift over base of the newest version each run serves (a run whose
versions were all rejected serves base: 0), paired by question over all seeds, and TRL's
KTOTrainer on the same samples. Prints a table, writes JSON and a PNG chart.

    .venv/bin/python bench/learning_populations.py      # bench/results/learning_pop_*.json

Result files: learning_pop_<population>_seed<k><suffix>.json; suffix '_ktobal' = the default
(KTO, baseline labels, balanced classes), '_klstop' = the default with the KL trust region
(--kl-line-search), '_onpolnotr' = the default with on-policy replies (--onpolicy-n 4),
'_compound' = the default in a deployment whose live comparison can promote a canary between
rounds (--canary-share 0.5 --drift-min-samples 10: each run continues the stable), '' = the
old pg + KL + SFT mix, '_ktoobj' = KTO with TRL's labels. Also prints every run of the options.
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
from bench.populations import POPULATIONS

OBJECTIVES = {"_ktobal": "default: KTO, baseline labels, balanced",
              "_klstop": "default + KL trust region (kl_line_search)",
              "_onpolnotr": "default + on-policy replies (onpolicy_n 4)",
              "_compound": "default, canaries promoted live (each run continues the stable)",
              "": "pg + KL + SFT (old default)", "_ktoobj": "KTO, TRL's labels",
              "kto": "TRL KTOTrainer (same samples, the default's runs)",
              "kto_klstop": "TRL KTOTrainer (same samples, the trust region's runs)",
              "kto_compound": "TRL KTOTrainer (same samples, the promoting runs)"}
KTO_FROM = {"_ktobal": "kto", "_klstop": "kto_klstop", "_compound": "kto_compound"}   # KTO is pooled from these runs only
NAME = re.compile(r"learning_pop_(?P<pop>[a-z_]+?)_seed(?P<seed>\d+)(?P<suffix>_[a-z]+)?\.json$")


def newest_served_diffs(report: dict) -> list[float]:
    scores = report["offline_scores"]
    v = (report.get("paired_lift") or {}).get("version")
    return [a - b for a, b in zip(scores[v], scores["base"])] if v else [0.0] * len(scores["base"])


def pool(folder: Path) -> dict:
    """{objective: {population: {"lift": mean_ci, "seeds": [...]}}}"""
    acc: dict = {}
    for path in sorted(folder.glob("learning_pop_*.json")):
        m = NAME.search(path.name)
        if not m or m["pop"] not in POPULATIONS:
            continue
        report = json.loads(path.read_text())
        sides = [(m["suffix"] or "", newest_served_diffs(report))]
        if m["suffix"] in KTO_FROM and "kto" in report["offline_scores"]:
            s = report["offline_scores"]
            sides.append((KTO_FROM[m["suffix"]], [a - b for a, b in zip(s["kto"], s["base"])]))
        for objective, diffs in sides:
            cell = acc.setdefault(objective, {}).setdefault(m["pop"], {"diffs": [], "seeds": []})
            cell["diffs"] += diffs
            cell["seeds"].append(int(m["seed"]))
    return {o: {p: {"lift": mean_ci(c["diffs"]), "seeds": sorted(c["seeds"])} for p, c in pops.items()}
            for o, pops in acc.items()}


def per_run(folder: Path, suffixes=("_klstop", "_onpolnotr", "_compound")) -> list[dict]:
    """One row per run of the given objectives: what the gate did, the newest served version's
    lift, KTO's, and the costs side by side."""
    rows = []
    for path in sorted(folder.glob("learning_pop_*.json")):
        m = NAME.search(path.name)
        if not m or m["pop"] not in POPULATIONS or (m["suffix"] or "") not in suffixes:
            continue
        rep = json.loads(path.read_text())
        cmp = {c["version"]: c for c in rep["comparison"]}
        v = (rep.get("paired_lift") or {}).get("version")
        lift = rep.get("paired_lift") or {}
        kto, ours = cmp.get("kto") or {}, cmp.get(v) or {}
        run_s = [(rd["learner"].get("run_s_per_trained_sample"), rd["learner"].get("state")) for rd in rep["rounds"]]
        alphas = "/".join(f"{(rd['learner'].get('trust_region') or {}).get('alpha', 1):g}" for rd in rep["rounds"]
                          if rd["learner"].get("state") in ("published", "rejected"))
        on = (rep.get("rerank") or {}).get("on_adapter") or {}
        rows.append({"population": m["pop"], "seed": int(m["seed"]), "objective": m["suffix"],
                     "runs": "".join("p" if s == "published" else "r" if s == "rejected" else "-" for _, s in run_s),
                     "newest": f"v{v}" if v else "base",
                     "lift": f"{lift['mean']:+.2f} [{lift['ci'][0]:+.2f}, {lift['ci'][1]:+.2f}]" if v else "0",
                     "kto": f"{kto['lift']:+.2f}" if kto.get("lift") is not None else "-",
                     "per1k ours/kto": f"{ours.get('per_1k_events') or 0:.1f} / {kto.get('per_1k_events') or 0:.1f}"
                     if ours and kto else "-",
                     "run s/sample": "/".join(f"{x:.2f}" for x, s in run_s if x and s in ("published", "rejected")),
                     "kto s/sample": f"{kto['train_s_per_sample']:.2f}" if kto.get("train_s_per_sample") else "-",
                     "update scale": alphas,
                     # each run's parent: base every time unless the live comparison promoted a canary
                     "parents": "/".join(str(rd["learner"].get("parent") or "-") for rd in rep["rounds"]),
                     "rerank on adapter": f"{on['lift']['mean']:+.2f} [{on['lift']['ci'][0]:+.2f}, "
                                          f"{on['lift']['ci'][1]:+.2f}]" if "lift" in on else "-"})
    return rows


def png(pooled: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pops = list(POPULATIONS)
    objectives = [o for o in OBJECTIVES if o in pooled]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(objectives)
    for i, o in enumerate(objectives):
        xs = [j + (i - (len(objectives) - 1) / 2) * width for j in range(len(pops))]
        cells = [pooled[o].get(p) for p in pops]
        means = [c["lift"]["mean"] if c else 0 for c in cells]
        err = [[(c["lift"]["mean"] - c["lift"]["ci"][0]) if c else 0 for c in cells],
               [(c["lift"]["ci"][1] - c["lift"]["mean"]) if c else 0 for c in cells]]
        seeds = {len(c["seeds"]) for c in cells if c}
        ax.bar(xs, means, width, yerr=err, capsize=3,
               label=f"{OBJECTIVES[o]} ({'/'.join(map(str, sorted(seeds)))} seeds)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(pops)), pops)
    ax.set_ylabel("held-out lift over base (paired, 95% CI)")
    ax.set_title("Newest served version vs base on questions never trained on")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--results", default="bench/results")
    ap.add_argument("--out", default="bench/results/learning_populations.json")
    ap.add_argument("--png", default="bench/results/learning_populations.png")
    args = ap.parse_args(argv)
    pooled = pool(Path(args.results))
    rows = []
    for o in (o for o in OBJECTIVES if o in pooled):
        row = {"objective": OBJECTIVES[o]}
        for p in POPULATIONS:
            c = pooled[o].get(p)
            row[p] = (f"{c['lift']['mean']:+.2f} [{c['lift']['ci'][0]:+.2f}, {c['lift']['ci'][1]:+.2f}] "
                      f"seeds {','.join(map(str, c['seeds']))}") if c else "-"
        rows.append(row)
    print(table(rows, ["objective", *POPULATIONS]))
    runs = per_run(Path(args.results))
    if runs:
        print()
        print(table(runs, list(runs[0])))
    Path(args.out).write_text(json.dumps({**pooled, "runs": runs}, indent=1))
    png(pooled, Path(args.png))
    print(f"wrote {args.out} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
