"""What the operator page and `rewardloop drift` show: one read of the ops store and the
registry, shaped as a dict (the page's JSON and the terminal report draw the same data)."""
from __future__ import annotations

from core import versions
from core.registry import Registry
from worker.ops import series
from worker.ops.drift import detector_from_dict
from worker.ops.store import HOUR, MINUTE, OpsStore

MAX_MINUTES = 24 * 60  # beyond a day the page switches to the hourly series


def build_state(store: OpsStore, minutes: int, now: float) -> dict:
    step = MINUTE if minutes <= MAX_MINUTES else HOUR
    since = now - minutes * 60
    registry = Registry(store.r, store.k, ".").state()
    totals = series.by_version(store.totals())
    verdicts = store.verdicts()
    buckets = store.buckets(step, since, now)
    return {
        "now": now, "since": since, "step_s": step,
        "series": series.series(buckets, step),
        "adapters": adapter_table(registry, totals, verdicts),
        "tags": series.tag_counts(totals),   # feedback reason tags per version, all time
        "pointers": {k: registry[k] for k in ("stable", "canary", "canary_share", "rollback_target")},
        "alarms": store.alarms(since=since),
        "timeline": store.timeline(),
        "depths": store.depths(),
        "storage": store.storage(),
        "detectors": [_detector_row(m, s) for m, s in sorted(store.detector_states().items())],
        "chat": chat_load(store, buckets, now),
    }


def chat_load(store: OpsStore, buckets: list, now: float) -> dict:
    """Chat tokens/s and TTFT while the learner is idle vs training over the window's buckets,
    and what each live server reports now (streams generating / waiting, learner run seen)."""
    merged = series.merge(b for _, b in buckets)
    figures = series.chat_figures(series.by_version(merged).get(series.ALL, {}))
    figures["servers"] = [{"server": sid, "age_s": round(now - ld.at, 1), "active": ld.active, "waiting": ld.waiting,
                           "training": ld.training} for sid, ld in sorted(store.servers().items())]
    return figures


def _detector_row(metric: str, saved: dict) -> dict:
    det = detector_from_dict(saved["detector"])
    return {"metric": metric, "detector": det.name, "statistic": det.statistic, "threshold": det.threshold,
            "armed": det.armed, "events": det.events_seen}


def adapter_table(registry: dict, totals: dict, verdicts: dict) -> list[dict]:
    """One row per version (base included), newest first: parent, samples, mean reward, state, the
    gate's safety probe figures (the registry entry's `probe`, None before the probe existed)."""
    rows = []
    entries = dict(registry["versions"])
    entries.setdefault("base", {"state": "published", "parent": "", "created": None})
    for v in versions.newest_first(entries):  # newest first, base last
        e = entries[v]
        fig = series.figures(totals.get(v, {}))["reward"]
        role = ("stable" if v == registry["stable"] else "canary" if v == registry["canary"] else
                "rollback target" if v == registry["rollback_target"] else "")
        rows.append({"version": v, "parent": str(e.get("parent") or ""), "state": e.get("state", ""),
                     "role": role, "created": e.get("created"), "samples": fig["n"], "mean_reward": fig["mean"],
                     "ci95": [fig["lo"], fig["hi"]], "verdict": verdicts.get(v),
                     "style": series.figures(totals.get(v, {}))["style"], "probe": e.get("probe")})
    return rows
