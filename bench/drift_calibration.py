"""Calibrate the drift detectors in worker/drift.py on simulated reward streams.

For each detector: the false-alarm rate (share of runs with any alarm over --events stable
events) and the detection delay (events after a step change of +/- --shift in mean reward
until the first alarm). Prints a table and, with --json, writes the numbers to a file.

Simulated reward of one reply (a stand-in for real feedback): the reply is "good" with
probability p (0.6 when stable); it got a thumb (good +1, bad -1), a rating (good 4-5, bad 1-3,
mapped (r-3)/2) or only implicit signals (good continuation 0.3 maybe plus copy 0.5, bad
regenerate -0.5 or nothing); plus N(0, 0.1) dwell noise; clipped to [-1, 1]. --scenario
mixture: 60% thumbs, 15% ratings, 25% implicit; thumbs: thumbs only (the worst case for
PageHinkley, see worker/drift.py). The mean is linear in p, so a shift of exactly --shift is a
change of p computed in closed form.

False-alarm runs use the real detectors with the threshold removed and record each run's
largest statistic once armed: before its first alarm a detector behaves the same whatever its
threshold, so "max statistic > threshold" is exactly "the detector would have alarmed". That
gives the false-alarm rate at the configured threshold and the threshold for --target-far
from one pass.

    .venv/bin/python bench/drift_calibration.py --runs 400 --seed 0 --json drift.json
    .venv/bin/python bench/drift_calibration.py --scenario thumbs --param page_hinkley.threshold=36
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from worker.ops.drift import DETECTORS, make_detector

# (value, probability) per kind of feedback, for a good and a bad reply
GOOD = ([(1.0, 1.0)], [(0.5, 0.5), (1.0, 0.5)], [(0.3, 0.7), (0.8, 0.3)])
BAD = ([(-1.0, 1.0)], [(-1.0, 1 / 3), (-0.5, 1 / 3), (0.0, 1 / 3)], [(-0.5, 0.5), (0.0, 0.5)])
# share of replies whose feedback is a thumb, a rating, implicit signals only
SCENARIOS = {
    "mixture": (0.60, 0.15, 0.25),
    # thumbs only: the largest variance a [-1, 1] reward with this mean can have (1 - mean^2),
    # hence the worst case for PageHinkley, whose thresholds are in reward units
    "thumbs": (1.0, 0.0, 0.0),
}
NOISE_STD = 0.1
BASE_P_GOOD = 0.6
NO_THRESHOLD = 1e12  # finite (configs refuse inf) and far above any statistic we can reach


def _clipped_normal_mean(v: float, s: float) -> float:
    """E[clip(v + N(0, s^2), -1, 1)] in closed form."""
    cdf = lambda t: 0.5 * math.erfc(-t / math.sqrt(2))
    pdf = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    a, b = (-1 - v) / s, (1 - v) / s
    inside = v * (cdf(b) - cdf(a)) + s * (pdf(a) - pdf(b))
    return -cdf(a) + inside + (1 - cdf(b))


def _conditional_mean(weights, table) -> float:
    return sum(w * sum(p * _clipped_normal_mean(v, NOISE_STD) for v, p in kind)
               for w, kind in zip(weights, table))


def mean_reward(weights, p_good: float) -> float:
    good, bad = _conditional_mean(weights, GOOD), _conditional_mean(weights, BAD)
    return bad + p_good * (good - bad)


def p_good_for_mean(weights, target: float) -> float:
    good, bad = _conditional_mean(weights, GOOD), _conditional_mean(weights, BAD)
    p = (target - bad) / (good - bad)
    if not 0 <= p <= 1:
        raise ValueError(f"mean reward {target:.3f} is out of reach of the simulation")
    return p


def simulate(rng: np.random.Generator, weights, p_good: np.ndarray) -> np.ndarray:
    """One reward per entry of p_good (the probability that reply is good)."""
    n = p_good.size
    kind = rng.choice(3, size=n, p=weights)
    good = rng.random(n) < p_good
    u = rng.random(n)
    values = np.empty(n)
    for k in range(3):
        for is_good, table in ((True, GOOD), (False, BAD)):
            mask = (kind == k) & (good == is_good)
            cum, out = 0.0, np.empty(mask.sum())
            picked = u[mask]
            for v, p in table[k]:  # inverse-CDF pick within this kind
                out[(picked >= cum) & (picked < cum + p + 1e-12)] = v
                cum += p
            values[mask] = out
    return np.clip(values + rng.normal(0.0, NOISE_STD, n), -1.0, 1.0)


def false_alarms(name: str, params: dict, weights, runs: int, events: int, seed: int,
                 target_far: float) -> dict:
    base = make_detector(name, **params)
    probe_params = {**asdict(base.config), "threshold": NO_THRESHOLD}
    rng = np.random.default_rng([seed, 1])
    max_stats, stds = [], []
    for _ in range(runs):
        xs = simulate(rng, weights, np.full(events, BASE_P_GOOD))
        stds.append(float(xs.std()))
        detector = make_detector(name, **probe_params)
        peak = 0.0
        for x in xs.tolist():
            detector.update(x)
            if detector.armed and detector.statistic > peak:
                peak = detector.statistic
        max_stats.append(peak)
    peaks = np.asarray(max_stats)
    alarms = int((peaks > base.threshold).sum())
    return {"runs": runs, "events": events, "runs_with_alarm": alarms,
            "false_alarm_rate": alarms / runs,
            f"threshold_for_{target_far:g}_far": float(np.quantile(peaks, 1 - target_far)),
            "max_statistic_p50": float(np.median(peaks)), "stream_std": float(np.mean(stds))}


def delays(name: str, params: dict, weights, runs: int, shift: float, change_at: int,
           horizon: int, seed: int) -> dict:
    p_before = BASE_P_GOOD
    p_after = p_good_for_mean(weights, mean_reward(weights, BASE_P_GOOD) + shift)
    want = "rise" if shift > 0 else "drop"
    p_good = np.where(np.arange(change_at + horizon) < change_at, p_before, p_after)
    rng = np.random.default_rng([seed, 2, int(shift > 0)])
    found, early, wrong, missed = [], 0, 0, 0
    for _ in range(runs):
        detector = make_detector(name, **params)
        for i, x in enumerate(simulate(rng, weights, p_good).tolist()):
            result = detector.update(x)
            if result is None:
                continue
            if i < change_at:  # a false alarm before the change; this run tells no delay
                early += 1
            elif result.direction != want:
                wrong += 1
            else:
                found.append(i - change_at + 1)  # changed events seen, the alarm's included
            break
        else:
            missed += 1
    arr = np.asarray(found, dtype=float)
    stat = (lambda f: float(f(arr))) if arr.size else (lambda f: None)
    return {"shift": shift, "runs": runs, "detected": int(arr.size), "alarm_before_change": early,
            "wrong_direction": wrong, "missed": missed, "mean_delay": stat(np.mean),
            "p50_delay": stat(np.median), "p95_delay": stat(lambda a: np.percentile(a, 95))}


def parse_params(items: list[str]) -> dict[str, dict]:
    """--param cusum.threshold=40 -> {"cusum": {"threshold": 40.0}}"""
    out: dict[str, dict] = {name: {} for name in DETECTORS}
    for item in items:
        key, _, value = item.partition("=")
        name, _, field_name = key.partition(".")
        if name not in out or not field_name or not value:
            raise SystemExit(f"--param {item!r}: expected DETECTOR.FIELD=VALUE, "
                             f"DETECTOR one of {', '.join(out)}")
        out[name][field_name] = int(value) if value.lstrip("-").isdigit() else float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=400, help="runs per measurement (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", metavar="OUT", type=Path, help="write the results here")
    parser.add_argument("--events", type=int, default=10_000,
                        help="stable events per false-alarm run (default 10000)")
    parser.add_argument("--shift", type=float, default=0.2,
                        help="size of the step change in mean reward (default 0.2)")
    parser.add_argument("--change-at", type=int, default=2000,
                        help="event index of the change in delay runs (default 2000)")
    parser.add_argument("--horizon", type=int, default=3000,
                        help="events after the change before a run counts as missed")
    parser.add_argument("--target-far", type=float, default=0.01,
                        help="false-alarm rate for the suggested threshold (default 0.01)")
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="mixture",
                        help="feedback mix: mixture (thumbs, ratings, implicit) or thumbs only "
                             "(largest variance, worst case for PageHinkley)")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS),
                        choices=list(DETECTORS), help="which detectors (default all)")
    parser.add_argument("--param", action="append", default=[], metavar="DET.FIELD=VALUE",
                        help="override a detector parameter, e.g. cusum.threshold=40")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.events < 1 or args.horizon < 1 or args.change_at < 0:
        parser.error("--runs, --events and --horizon must be >= 1, --change-at >= 0")
    overrides = parse_params(args.param)

    started = time.perf_counter()
    weights = SCENARIOS[args.scenario]
    mean = mean_reward(weights, BASE_P_GOOD)
    report = {"seed": args.seed, "simulation": {
        "scenario": args.scenario,
        "kind_weights": dict(zip(("thumbs", "rating", "implicit"), weights)),
        "noise_std": NOISE_STD, "p_good": BASE_P_GOOD, "mean": mean,
        "events": args.events, "shift": abs(args.shift), "change_at": args.change_at,
        "horizon": args.horizon,
        "p_good_after_drop": p_good_for_mean(weights, mean - abs(args.shift)),
        "p_good_after_rise": p_good_for_mean(weights, mean + abs(args.shift))},
        "detectors": {}}
    for name in args.detectors:
        params = overrides[name]
        config = asdict(make_detector(name, **params).config)
        entry = {"config": config,
                 "stable": false_alarms(name, params, weights, args.runs, args.events, args.seed,
                                        args.target_far)}
        for label, shift in (("drop", -abs(args.shift)), ("rise", abs(args.shift))):
            entry[label] = delays(name, params, weights, args.runs, shift, args.change_at,
                                  args.horizon, args.seed)
        report["detectors"][name] = entry
    report["seconds"] = round(time.perf_counter() - started, 1)

    sim = report["simulation"]
    print(f"{args.scenario} stream: mean {sim['mean']:.3f}, std "
          f"{next(iter(report['detectors'].values()))['stable']['stream_std']:.3f}; "
          f"{args.runs} runs, {args.events} stable events, change of +/-{abs(args.shift)} "
          f"at event {args.change_at}, seed {args.seed}")
    far_key = f"threshold_for_{args.target_far:g}_far"
    print(f"{'detector':<14}{'params':<44}{'false alarms':>13}{'drop mean/p95':>16}"
          f"{'rise mean/p95':>16}{'miss':>6}{'thr@' + format(args.target_far, 'g'):>10}")
    for name, entry in report["detectors"].items():
        params = ", ".join(f"{k}={v:g}" for k, v in entry["config"].items())
        stable = entry["stable"]
        fmt = lambda d: (f"{d['mean_delay']:.0f}/{d['p95_delay']:.0f}"
                         if d["mean_delay"] is not None else "-")
        print(f"{name:<14}{params:<44}{stable['false_alarm_rate']:>12.1%} "
              f"{fmt(entry['drop']):>16}{fmt(entry['rise']):>16}"
              f"{entry['drop']['missed'] + entry['rise']['missed']:>6}{stable[far_key]:>10.1f}")
    print(f"({report['seconds']} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
