"""The operator monitor task: fold new `rewards` and `events` entries into the per-minute and
per-hour series, feed the sequential drift detectors, run the live comparison of the newest
adapter version with its baseline (worker/ops/sequential.py) and act on its decision: promote a
canary that is not worse (REWARDLOOP_CANARY_POLICY=promote), roll back a worse version
(REWARDLOOP_DRIFT_POLICY=rollback).

One beat entry (`ops-monitor`, every REWARDLOOP_OPS_EVERY_S) runs `ops_tick`. The fold is
idempotent (cursors committed with the increments, see worker/ops_store.py). A version is
decided at most once: the verdict (`ops:verdicts`, with `worse` true for a rollback decision,
what the learner reads through core.registry.found_worse) is kept, so an operator who promotes a
rolled-back version again on purpose is not overruled by the next tick.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import redis

from core.settings import WorkerSettings
from worker.ops import alerts, series, style
from worker.ops.policy import Watch, evidence, promote_reason, rollback_reason, run_detectors, version_under_watch
from worker.ops.sequential import ROLLBACK, Decision, SequentialConfig, decide
from worker.ops.store import HOUR, MINUTE, OpsStore

log = logging.getLogger(__name__)

BATCH = 1000
MAX_BATCHES = 20  # per tick; a backlog is worked off over several ticks
MONITOR = "drift-monitor"


@dataclass
class FoldResult:
    rewards: int = 0
    events: int = 0
    alarms: list[dict] = field(default_factory=list)


def _entry_time(sid: str, fields: dict, name: str) -> float:
    try:
        return float(fields[name])
    except (KeyError, ValueError):
        return int(sid.split("-")[0]) / 1000.0  # the stream id is the append time


def fold_once(store: OpsStore, now: float, batch: int = BATCH, detector_params: dict | None = None
              ) -> FoldResult | None:
    """Fold up to `batch` new entries of each stream; None when another fold won the race."""
    old = store.cursors()
    rewards = store.read_after("rewards", old["rewards"], batch)
    events = store.read_after("events", old["events"], batch)
    if not rewards and not events:
        return FoldResult()
    facts = store.reply_facts([f.get("reply_id", "") for _, f in rewards],
                              [f.get("reply_id", "") for _, f in events if f.get("kind") == "dwell"])
    buckets: dict = {}
    totals: dict[str, float] = {}
    vrewards: dict[str, list[float]] = defaultdict(list)
    values: list[tuple[str, float, float]] = []

    def put(ts: float, inc: dict) -> None:
        series.add(buckets, (MINUTE, series.floor_to(ts, MINUTE)), inc)
        series.add(buckets, (HOUR, series.floor_to(ts, HOUR)), inc)
        for name, value in inc.items():
            totals[name] = totals.get(name, 0.0) + value

    texts = store.reply_texts(f.get("reply_id", "") for _, f in rewards)
    for sid, f in rewards:
        ts = _entry_time(sid, f, "finalized_at")
        ended_at, _ = facts.get(f.get("reply_id", ""), (None, 0))
        put(ts, series.reward_increments(f, ended_at))
        if f.get("reply_id") in texts:   # what the reply looked like, per version (reward hacking)
            v = f.get("adapter_version") or "unknown"
            put(ts, {series.field(k, v): x for k, x in style.reply_style(texts[f["reply_id"]]).items()})
        latency = series.latency_seconds(f, ended_at)
        if latency is not None:
            for name, value in series.latency_bucket_increments(latency).items():
                totals[name] = totals.get(name, 0.0) + value
        for metric, value in series.detector_values(f, stream="rewards"):
            values.append((metric, value, ts))
            vrewards[f.get("adapter_version") or "unknown"].append(value)
    for sid, f in events:
        ts = _entry_time(sid, f, "server_time")
        words = facts.get(f.get("reply_id", ""), (None, 0))[1]
        put(ts, series.event_increments(f, words))
        values.extend((m, v, ts) for m, v in series.detector_values(f, words))
    states, fired = run_detectors(store.detector_states(), values, detector_params)
    alarms = [{"at": now, "detector": r.detector, "metric": r.metric, "version": r.version or "",
               "direction": r.direction, "statistic": r.statistic, "threshold": r.threshold,
               "message": r.message, "evidence": r.evidence, "since": since, "until": until, "action": "alert"}
              for r, since, until in fired]
    new = {"rewards": rewards[-1][0] if rewards else old["rewards"],
           "events": events[-1][0] if events else old["events"]}
    if not store.commit_fold(old, new, buckets=buckets, totals=totals, version_rewards=vrewards,
                             detectors=states, alarms=alarms):
        return None
    return FoldResult(len(rewards), len(events), alarms)


def fold(store: OpsStore, now: float, batch: int = BATCH, max_batches: int = MAX_BATCHES,
         detector_params: dict | None = None) -> FoldResult:
    """Fold until caught up (or max_batches). detector_params: Cusum config fields for new
    detectors (default: worker/drift.py's calibrated defaults)."""
    total = FoldResult()
    for _ in range(max_batches):
        res = fold_once(store, now, batch, detector_params)
        if res is None:  # another fold moved the cursors: it does this work
            break
        total.rewards += res.rewards
        total.events += res.events
        total.alarms += res.alarms
        if res.rewards < batch and res.events < batch:
            break
    return total


def sequential_config(settings: WorkerSettings) -> SequentialConfig:
    return SequentialConfig(worse_by=settings.drift_min_effect, alpha=settings.drift_alpha,
                            min_samples=settings.drift_min_samples, max_samples=settings.drift_max_samples)


def check_versions(store: OpsStore, registry, settings: WorkerSettings, now: float, new_rewards: bool = True
                   ) -> dict | None:
    """Run the live comparison of the version under watch with its baseline and act on a
    decision. Returns the alarm it raised (None: nothing under watch, already decided, or not
    worse). Without new rewards a version already looked at against the same baseline is not
    re-read."""
    state = registry.state()
    watch = version_under_watch(state)
    prior = store.verdicts().get(watch.version, {}) if watch else {}
    if watch is None or prior.get("alarm") or prior.get("final") or (
            not new_rewards and prior.get("parent") == watch.parent):
        return None
    result = decide(store.version_rewards(watch.version), store.version_rewards(watch.parent),
                    sequential_config(settings))
    verdict = {"at": now, "decision": result.decision, "worse": result.worse, "final": result.final,
               "alarm": result.worse, "parent": watch.parent, "role": watch.role, "reason": result.reason,
               "message": result.summary(watch.version, watch.parent), "child_n": result.n_new,
               "parent_n": result.n_base, "llr": result.llr, "diff": result.diff}
    if result.decision == ROLLBACK:
        return _roll_back(store, registry, settings, now, watch, result, verdict=verdict, state=state)
    ev = evidence(result, watch)
    check_style(store, watch, ev, settings, now, verdict, raised_before=bool(prior.get("style_alarm")))
    if result.final:
        verdict["action"] = _act_on_not_worse(store, registry, settings, watch, result, verdict)
        # decided once it acted; held (policy, style alarm) or failed: looked at again next tick
        verdict["final"] = verdict["action"] == "promoted" or verdict["action"].startswith("kept")
    store.set_verdict(watch.version, verdict)
    return None


def _act_on_not_worse(store: OpsStore, registry, settings: WorkerSettings, watch: Watch, result: Decision,
                      verdict: dict) -> str:
    """What a 'not worse' decision does: promote a canary (policy permitting), keep a stable."""
    from core.registry import RegistryError
    if watch.role != "canary":
        return f"kept: not worse than {watch.parent}"
    if settings.canary_policy != "promote":
        return "not worse: an operator promotes it (REWARDLOOP_CANARY_POLICY=hold)"
    if verdict.get("style_alarm"):   # a suspected hacked signal is for a person to judge
        return "not promoted: its style drifted while its reward rose (style alarm); an operator decides"
    why = promote_reason(watch, result)
    try:
        registry.move("promote", watch.version, by=MONITOR, reason=why)
    except (RegistryError, redis.RedisError) as exc:
        log.error("drift monitor: promoting canary %s failed: %s", watch.version, exc)
        return f"promotion failed: {exc}"
    store.count("canary_promotions")
    log.info("drift monitor: %s", why)
    return "promoted"


def _roll_back(store: OpsStore, registry, settings: WorkerSettings, now: float, watch: Watch, result: Decision,
               *, verdict: dict, state: dict) -> dict:
    """A 'worse' decision: the alarm, and under the rollback policy the rollback (a canary is
    dropped, a stable goes back to its parent)."""
    from core.registry import RegistryError
    action = "alert"
    if settings.drift_policy == "rollback":
        try:
            registry.move("rollback", None if watch.role == "canary" else watch.parent, by=MONITOR,
                          reason=rollback_reason(result, watch))
            action = f"rolled back to {watch.parent}"
            store.count("drift_rollbacks")
        except (RegistryError, redis.RedisError) as exc:
            action = f"rollback to {watch.parent} failed: {exc}"
            log.error("drift monitor: %s", action)
    created = float((state["versions"].get(watch.version) or {}).get("created") or now)
    alarm = {"at": now, "detector": "sprt", "metric": "reward", "version": watch.version, "direction": "drop",
             "statistic": result.llr, "threshold": result.config.lower,
             "message": rollback_reason(result, watch), "evidence": evidence(result, watch),
             "since": created, "until": now, "action": action}
    store.set_verdict(watch.version, dict(verdict, action=action))
    store.add_alarm(alarm)
    alerts.send(alarm, settings.alert_webhook)
    return alarm


def check_style(store: OpsStore, watch, ev: dict, settings: WorkerSettings, now: float, verdict: dict,
                *, raised_before: bool = False) -> dict | None:
    """A reward-hacking alarm (alert only) when the version's style drifted beyond its band
    while its reward rose above its parent's; raised once per version (raised_before: the
    stored verdict says it was)."""
    if raised_before:
        verdict["style_alarm"] = True
        return None
    per_version = series.by_version(store.totals())
    parent, child = (style.style_figures(per_version.get(v, {})) for v in (watch.parent, watch.version))
    reasons = style.style_drift(parent, child, ev["parent"].get("mean"), ev["child"].get("mean"))
    if not reasons:
        return None
    verdict["style_alarm"] = True
    alarm = {"at": now, "detector": "style", "metric": "style", "version": watch.version, "direction": "drift",
             "statistic": float(len(reasons)), "threshold": 0.0,
             "message": f"version {watch.version}: reward rose above {watch.parent}'s while its style drifted ("
                        + "; ".join(reasons) + "): check for a hacked signal before promoting it",
             "evidence": {"parent": parent, "child": child, "reasons": reasons}, "since": now, "until": now,
             "action": "alert"}
    store.add_alarm(alarm)
    alerts.send(alarm, settings.alert_webhook)
    return alarm


def ops_tick(store: OpsStore, registry, settings: WorkerSettings, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    res = fold(store, now)
    for alarm in res.alarms:
        alerts.send(alarm, settings.alert_webhook)
    store.snapshot_depths(now)
    store.fold_servers(now)   # chat throughput and TTFT by learner state, from the servers' heartbeats
    version_alarm = check_versions(store, registry, settings, now, new_rewards=res.rewards > 0)
    return {"rewards": res.rewards, "events": res.events, "alarms": len(res.alarms) + bool(version_alarm),
            "rollback": (version_alarm or {}).get("action")}


def store_for(client: redis.Redis, settings: WorkerSettings, keys) -> OpsStore:
    return OpsStore(client, keys, settings.ops_minute_retention_s, settings.ops_hour_retention_s)
