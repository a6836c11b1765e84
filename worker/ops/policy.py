"""Drift monitoring decisions, pure (no Redis): which version is under watch, which detectors
see which values, when an alarm means an automatic rollback. worker/drift_task.py does the I/O.

Detection delay and false alarms (documented for operators; tests use smaller figures):
- Version comparison (the rollback trigger): compare_versions(parent, child) with
  min_samples=REWARDLOOP_DRIFT_MIN_SAMPLES (50) rewarded replies on each side, one-sided
  alpha=REWARDLOOP_DRIFT_ALPHA (0.01), minimum drop REWARDLOOP_DRIFT_MIN_EFFECT (0.05). Delay =
  time for the child to collect min_samples rewarded replies + the reward wait window (10 min
  by default, shorter at session end) + at most one monitor tick (REWARDLOOP_OPS_EVERY_S, 15 s).
  A drop of 0.3 on a thumbs-like reward (std ~0.9) needs ~150 child replies for 90% power at
  alpha 0.01; 50 gives ~45%. The test repeats every tick on a growing sample, so the
  false-alarm rate per version is above alpha (a few percent, not 1%); min_effect keeps tiny
  significant drops from rolling back.
- Sequential detectors (alarm only, no rollback): Cusum(k=0.15, h=48, warmup=1000) per
  metric over all versions: 0.5% false alarms per 10,000 events, a 0.2 drop is seen after
  486 events on average (p95 1,117), after the 1,000-event warmup (see worker/drift.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from worker.ops.drift import DriftResult, detector_from_dict, make_detector

SEQUENTIAL_METRICS = ("reward", "thumbs_up", "rating", "dwell_ratio", "continuation_rate", "regenerate_rate",
                      "copy_rate", "abandon_rate")


@dataclass(frozen=True)
class Watch:
    """The version whose replies are compared with its parent's."""
    version: str
    parent: str
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
        if v and v != "base" and entry and entry.get("state") == "published":
            parent = str(entry.get("parent") or "base")
            if parent != v:
                return Watch(v, parent, role)
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


def rollback_reason(result: DriftResult) -> str:
    """One line for the registry history: what was compared and the evidence."""
    ev = result.evidence
    child, parent = ev.get("child", {}), ev.get("parent", {})
    return (f"drift monitor: reward of version {result.version} {child.get('mean', 0):.3f} "
            f"(n={child.get('n')}) < parent {ev.get('parent_version')} {parent.get('mean', 0):.3f} "
            f"(n={parent.get('n')}), diff {ev.get('diff', 0):+.3f}, one-sided p={ev.get('p_value', 1):.2g}")


def promote_reason(watch: Watch, result: DriftResult, min_samples: int) -> str | None:
    """Why the canary under watch should become stable, or None. The live comparison decides a
    canary the gate could not judge offline: promote once both sides have min_samples rewarded
    replies, the one-sided test found the canary not worse, and its mean is at least the
    parent's (a tie stays a canary until more replies arrive). Pure."""
    if watch.role != "canary" or result.alarm:
        return None
    child, parent = result.evidence.get("child") or {}, result.evidence.get("parent") or {}
    if (child.get("n") or 0) < min_samples or (parent.get("n") or 0) < min_samples:
        return None
    if child.get("mean") is None or parent.get("mean") is None or child["mean"] < parent["mean"]:
        return None
    return (f"live comparison: canary {watch.version}'s mean reward {child['mean']:+.3f} (n={child['n']}) >= "
            f"parent {watch.parent}'s {parent['mean']:+.3f} (n={parent['n']}) and not significantly worse")
