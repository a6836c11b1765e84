"""Reward and drift figures for Prometheus, computed from Redis at scrape time (a custom
collector on the server's registry, so every server answers the same deployment-wide numbers;
scrape one of them, or aggregate with max()). Conventional names: counters end in `_total`,
latencies are a histogram in seconds, ratios end in `_ratio`; labels are adapter versions,
signal kinds and detector names only, never user, session or reply ids."""
from __future__ import annotations

import logging
import time

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from core.server_load import STATES
from worker.ops import series
from worker.ops.drift import detector_from_dict
from worker.ops.store import MINUTE, OpsStore

log = logging.getLogger(__name__)

WINDOW_S = 15 * 60  # gauges (mean reward, signal mix, coverage) cover the last 15 minutes
SIGNAL_COUNTERS = {"reply": "replies", "thumbs": "thumbs_n", "rating": "rating_n", "continuation": "continuation",
                   "regenerate": "regenerate", "copy": "copy", "dwell": "dwell_n", "abandon": "abandon"}


class OpsCollector:
    def __init__(self, store: OpsStore):
        self.store = store

    def collect(self):
        up = GaugeMetricFamily("rewardloop_ops_redis_up", "1 when the reward/drift figures could be read from Redis")
        try:
            families = list(self._families(time.time()))
        except (redis.RedisError, ValueError) as exc:
            log.warning("ops metrics: cannot read Redis (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, now: float):
        st = self.store
        totals = series.by_version(st.totals())
        versions = sorted((v for v in totals if v != series.ALL), key=series.version_key)
        yield from _per_version(totals, versions)
        yield from _folded(totals.get(series.ALL, {}))
        yield from self._window(now)
        yield from _queues(st)
        yield from _storage(st.storage())
        yield from _detectors(st)

    def _window(self, now: float):
        buckets = self.store.buckets(MINUTE, now - WINDOW_S, now)
        per_version = series.by_version(series.merge(b for _, b in buckets))
        mean = GaugeMetricFamily("rewardloop_reward_mean", "Mean final reward of rewarded replies over the last "
                                 "15 minutes, by adapter version", labels=["adapter_version"])
        for v in sorted((v for v in per_version if v != series.ALL), key=series.version_key):
            m = series.figures(per_version[v])["reward"]["mean"]
            if m is not None:
                mean.add_metric([v], m)
        yield mean
        overall = series.figures(series.merge(c for v, c in per_version.items() if v != series.ALL))
        mix = GaugeMetricFamily("rewardloop_signal_mix", "Signal mix over the last 15 minutes (rates per reply or "
                                "per vote; mean_rating in 1..5; dwell_ratio = visible / expected reading time)",
                                labels=["signal"])
        for name in series.SIGNAL_MIX:
            if overall[name] is not None:
                mix.add_metric([name], overall[name])
        yield mix
        coverage = GaugeMetricFamily("rewardloop_reward_coverage_ratio", "Share of final rewards over the last "
                                     "15 minutes whose reply got any signal")
        if overall["coverage"] is not None:
            coverage.add_metric([], overall["coverage"])
        yield coverage
        chat = series.chat_figures(per_version.get(series.ALL, {}))
        rate = GaugeMetricFamily("rewardloop_chat_tokens_per_second", "Chat tokens per busy second over the last 15 "
                                 "minutes, all servers, by learner state (idle, training: a learner run held the lock)",
                                 labels=["learner"])
        p95 = GaugeMetricFamily("rewardloop_chat_ttft_p95_seconds", "95th percentile of the chat time to first token "
                                "over the last 15 minutes, all servers, by learner state", labels=["learner"])
        for state in STATES:
            if chat[state]["tokens_per_s"] is not None:
                rate.add_metric([state], chat[state]["tokens_per_s"])
            if chat[state]["ttft_p95"] is not None:
                p95.add_metric([state], chat[state]["ttft_p95"])
        yield rate
        yield p95
        last_full = buckets[-2][1] if len(buckets) >= 2 else {}
        eps = GaugeMetricFamily("rewardloop_events_per_second", "Events per second over the last complete minute")
        eps.add_metric([], float(last_full.get(series.field("events", series.ALL), 0.0)) / MINUTE)
        yield eps


def _per_version(totals: dict, versions: list[str]):
    """Final rewards, signals, reason tags and reply style, by adapter version, over all time."""
    final = CounterMetricFamily("rewardloop_rewards_final", "Final rewards folded, by adapter version and "
                                "ledger state (rewarded, defaulted, excluded)", labels=["adapter_version", "state"])
    signals = CounterMetricFamily("rewardloop_signal_events", "Replies and feedback signals, by adapter version "
                                  "and kind", labels=["adapter_version", "kind"])
    for v in versions:
        for state in series.FINAL_STATES:
            final.add_metric([v, state], totals[v].get("final_" + state, 0.0))
        for kind, counter in SIGNAL_COUNTERS.items():
            signals.add_metric([v, kind], totals[v].get(counter, 0.0))
    yield final
    yield signals
    tags = CounterMetricFamily("rewardloop_feedback_tags", "Feedback reason tags people gave (not accurate, "
                               "unsafe, helpful, ...), by adapter version and tag", labels=["adapter_version", "tag"])
    for v, counts in series.tag_counts(totals).items():
        for tag, n in counts.items():
            tags.add_metric([v, tag], n)
    yield tags
    # reward-hacking monitors: what each version's replies look like (worker/ops/style.py)
    style = GaugeMetricFamily("rewardloop_reply_style", "Reply style per adapter version over all its final "
                              "replies: mean_words, refusal_rate, question_rate (share ending with '?'), "
                              "distinct2 (unique word bigrams per bigram)", labels=["adapter_version", "figure"])
    for v in versions:
        for name, value in series.figures(totals[v])["style"].items():
            if name != "n" and value is not None:
                style.add_metric([v, name], value)
    yield style


def _folded(every: dict):
    """Reward latency, events folded, drift alarms and rollbacks, all versions together."""
    bounds = [(floatToGoString(b), every.get(f"latency_le_{b}", 0.0)) for b in series.LATENCY_BUCKETS_S]
    count = every.get("latency_count", 0.0)
    yield HistogramMetricFamily("rewardloop_reward_latency_seconds", "From a reply's end to its final reward",
                                buckets=bounds + [("+Inf", count)], sum_value=every.get("latency_total", 0.0))
    events = CounterMetricFamily("rewardloop_ops_events_folded", "Entries of the events stream folded into the "
                                 "series")
    events.add_metric([], every.get("events", 0.0))
    yield events
    alarms = CounterMetricFamily("rewardloop_drift_alarms", "Drift alarms, by detector and metric",
                                 labels=["detector", "metric"])
    for name, value in every.items():
        if name.startswith("alarms:"):
            _, detector, metric = name.split(":", 2)
            alarms.add_metric([detector, metric], value)
    yield alarms
    rollbacks = CounterMetricFamily("rewardloop_drift_rollbacks", "Automatic rollbacks by the drift monitor")
    rollbacks.add_metric([], every.get("drift_rollbacks", 0.0))
    yield rollbacks


def _queues(st: OpsStore):
    """What waits: rewards not yet final, dead letters, final rewards not yet folded."""
    depths = st.depths()
    pending = GaugeMetricFamily("rewardloop_rewards_pending", "Replies waiting for their final reward")
    pending.add_metric([], depths["pending"])
    dead = GaugeMetricFamily("rewardloop_dead_letters", "Events parked after too many failed deliveries")
    dead.add_metric([], depths["dead_letters"])
    lag = GaugeMetricFamily("rewardloop_ops_fold_lag_seconds", "Age of the oldest final reward not yet folded "
                            "into the series (0: all folded)")
    lag.add_metric([], st.lag_s() or 0.0)
    yield pending
    yield dead
    yield lag


def _detectors(st: OpsStore):
    """Each sequential drift detector's statistic and threshold."""
    stat = GaugeMetricFamily("rewardloop_drift_statistic", "Current statistic of each sequential drift "
                             "detector (alarm above the threshold)", labels=["detector", "metric"])
    thr = GaugeMetricFamily("rewardloop_drift_threshold", "Alarm threshold of each sequential drift detector",
                            labels=["detector", "metric"])
    for metric, saved in st.detector_states().items():
        det = detector_from_dict(saved["detector"])
        stat.add_metric([det.name, metric], det.statistic)
        thr.add_metric([det.name, metric], det.threshold)
    yield stat
    yield thr


def _storage(st: dict):
    """Redis memory (alert at 80 % of maxmemory) and the archive task's health."""
    yield GaugeMetricFamily("rewardloop_redis_memory_used_bytes", "Redis used_memory", value=st["redis_used"])
    yield GaugeMetricFamily("rewardloop_redis_memory_max_bytes", "Redis maxmemory (0: no limit set; deploy/ sets "
                            "one with noeviction)", value=st["redis_max"])
    yield GaugeMetricFamily("rewardloop_redis_memory_ratio", "Redis used_memory / maxmemory (alert above 0.8; 0 "
                            "when no maxmemory is set)", value=st["redis_ratio"] or 0.0)
    arch = st["archive"]
    yield GaugeMetricFamily("rewardloop_archive_failing", "1 while the archive task's runs fail (unwritable or "
                            "full location): Redis keeps the data meanwhile", value=1.0 if arch["ok"] is False else 0.0)
    yield GaugeMetricFamily("rewardloop_archive_last_success_timestamp_seconds", "When an archive run last "
                            "succeeded (0: none yet)", value=arch["last_ok_at"] or 0.0)
    yield GaugeMetricFamily("rewardloop_archive_bytes", "Bytes in the archive", value=arch["bytes"] or 0.0)
    yield GaugeMetricFamily("rewardloop_archive_files", "Files in the archive", value=arch["files"] or 0.0)
