"""Drift monitoring decisions, pure (no Redis): which version is under watch and against which
baseline, which detectors see which values, what the live comparison's decision means for the
registry. worker/ops/monitor.py does the I/O.

- Live comparison (promotion and automatic rollback): worker/ops/sequential.py, a truncated
  SPRT on the difference of mean rewards, new version minus its baseline (the stable, for a
  canary: the version a promotion replaces and a rollback returns to; the parent, for a version
  published straight to stable). REWARDLOOP_DRIFT_MIN_EFFECT (0.3) is the drop that counts as
  worse, REWARDLOOP_DRIFT_ALPHA (0.05) the target rate of each wrong decision,
  REWARDLOOP_DRIFT_MIN_SAMPLES (8) the rewarded replies a side before any decision and
  REWARDLOOP_DRIFT_MAX_SAMPLES (40) the new version's rewarded replies at which it decides
  anyway. Simulated (bench/gate_sim.py --live, 1000 candidates, thumbs-only rewards, the slowest
  case): at the default canary share 0.5 a canary worse by 0.3 or more is promoted in 5% of runs
  (rolled back after ~33 canary rewards), a tie rolled back in 21%, a better one in 4%; a tie
  takes ~37 canary rewards, ~74 in all (at share 0.1 only 23% of ties are decided in 300).
  Delay = those rewards + the reward wait window + at most one monitor tick
  (REWARDLOOP_OPS_EVERY_S, 15 s). A decided version is not tested again.
- Sequential detectors (alarm only, no rollback): Cusum(k=0.15, h=48, warmup=1000) per
  metric over all versions: 0.5% false alarms per 10,000 events, a 0.2 drop is seen after
  486 events on average (p95 1,117), after the 1,000-event warmup (see worker/drift.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from core.versions import is_base
from worker.ops.drift import detector_from_dict, make_detector
from worker.ops.result import DriftResult
from worker.ops.sequential import Decision

SEQUENTIAL_METRICS = ("reward", "thumbs_up", "rating", "dwell_ratio", "continuation_rate", "regenerate_rate",
                      "copy_rate", "abandon_rate")


@dataclass(frozen=True)
class Watch:
    """The version whose replies are compared, and the baseline they are compared with: the
    stable for a canary (what a promotion replaces, what a rollback returns to), the parent for
    a version published straight to stable."""
    version: str
    parent: str   # the baseline
    role: str  # canary | stable


def version_under_watch(state: Mapping[str, Any]) -> Watch | None:
    """The canary if there is one, else the stable when it is the newest published version
    (published straight to stable). A stable reached by a rollback or by promoting an older
    version is an operator's choice, not a new version: None then."""
    versions = state.get("versions") or {}
    published = [int(v) for v, e in versions.items() if v.isdigit() and e.get("state") == "published"]
    newest = str(max(published)) if published else None
    for role in ("canary", "stable"):
        v = str(state.get(role) or "")
        entry = versions.get(v)
        if role == "stable" and v != newest:
            continue
        if not is_base(v) and entry and entry.get("state") == "published":
            baseline = str(state.get("stable") or "base") if role == "canary" else str(entry.get("parent") or "base")
            if baseline != v:
                return Watch(v, baseline, role)
    return None


def run_detectors(states: Mapping[str, dict], values: Iterable[tuple[str, float, float]],
                  params: Mapping[str, Any] | None = None, detector: str = "cusum"
                  ) -> tuple[dict[str, dict], list[tuple[DriftResult, float, float]]]:
    """Feed (metric, value, time) triples in order to one detector per metric, restored from
    `states` (metric -> {"detector": to_dict(), "since": time its regime began}). Returns
    (new states, [(alarm, regime start time, alarm time)]): the times bound the window of
    replies an operator should look at."""
    live = {m: detector_from_dict(s["detector"]) for m, s in states.items()}
    since = {m: float(s.get("since") or 0.0) for m, s in states.items()}
    alarms: list[tuple[DriftResult, float, float]] = []
    for metric, value, ts in values:
        if metric not in live:
            live[metric] = make_detector(detector, metric=metric, **dict(params or {}))
            since[metric] = ts
        result = live[metric].update(value)
        if result is not None:
            alarms.append((result, since[metric], ts))
            since[metric] = ts  # the detector restarts on fresh statistics
    return {m: {"detector": d.to_dict(), "since": since[m]} for m, d in live.items()}, alarms


def evidence(decision: Decision, watch: Watch) -> dict:
    """The decision as alarm / verdict evidence (JSON): both sides' counts and means, the
    difference, the log-likelihood ratio and its bounds, the test's settings."""
    d = decision.to_dict()
    return {"parent_version": watch.parent, "child": {"n": decision.n_new, "mean": decision.mean_new},
            "parent": {"n": decision.n_base, "mean": decision.mean_base}, "diff": decision.diff,
            "llr": decision.llr, "bounds": [d["lower"], d["upper"]], "std": decision.std,
            "reason": decision.reason, "decision": decision.decision, "config": d["config"]}


def rollback_reason(decision: Decision, watch: Watch) -> str:
    """One line for the registry history: what was compared and the evidence."""
    return f"live comparison found version {watch.version} worse: {decision.summary(watch.version, watch.parent)}"


def promote_reason(watch: Watch, decision: Decision) -> str | None:
    """Why the canary under watch should become stable, or None: the sequential test decided
    'not worse than the stable' (worker/ops/sequential.py). Pure."""
    if watch.role != "canary" or decision.decision != "promote":
        return None
    return (f"live comparison: canary {watch.version} not worse than stable {watch.parent} "
            f"({decision.reason}): {decision.summary(watch.version, watch.parent)}")
