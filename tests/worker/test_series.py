"""The per-minute series arithmetic and the drift policy, on plain data (no Redis)."""
from __future__ import annotations

import math

import pytest

from worker.ops import series
from worker.ops.policy import run_detectors, version_under_watch


def reward(v: str, r: float | None, state: str = "rewarded", at: float = 1000.0) -> dict:
    return {"adapter_version": v, "state": state, "reward": "" if r is None else repr(r), "finalized_at": repr(at)}


def test_reward_increments_count_only_rewarded_values_and_latency():
    inc = series.reward_increments(reward("3", 0.5, at=1010.0), ended_at=1000.0)
    assert inc == {"final_rewarded|3": 1.0, "reward_n|3": 1.0, "reward_sum|3": 0.5, "reward_sq|3": 0.25,
                   "latency_n|3": 1.0, "latency_sum|3": 10.0}
    defaulted = series.reward_increments(reward("3", 0.0, state="defaulted"), ended_at=None)
    assert defaulted == {"final_defaulted|3": 1.0}  # counts for coverage, not for the mean


def test_mean_ci_matches_the_textbook_formula_and_merges_by_addition():
    values = [1.0, -1.0, 1.0, 1.0, 0.5]
    b1, b2 = {}, {}
    for i, v in enumerate(values):
        series.add({"x": b1 if i < 2 else b2}, "x", series.reward_increments(reward("1", v), None))
    merged = series.by_version(series.merge([b1, b2]))["1"]
    got = series.figures(merged)["reward"]
    n, mean = len(values), sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    assert got["n"] == 5 and got["mean"] == pytest.approx(mean)
    assert got["lo"] == pytest.approx(mean - 1.96 * sd / math.sqrt(n), abs=1e-3)
    assert got["hi"] == pytest.approx(mean + 1.96 * sd / math.sqrt(n), abs=1e-3)
    assert series.mean_ci(1, 0.3, 0.09) == {"n": 1, "mean": 0.3, "lo": None, "hi": None}


def test_signal_mix_coverage_and_events_per_second():
    bucket: dict = {}
    ev = [{"kind": "reply", "adapter_version": "2"}] * 4 + [
        {"kind": "thumbs", "value": "1", "adapter_version": "2"},
        {"kind": "thumbs", "value": "-1", "adapter_version": "2"},
        {"kind": "rating", "value": "4", "adapter_version": "2"},
        {"kind": "copy", "adapter_version": "2"}, {"kind": "regenerate", "adapter_version": "2"},
        {"kind": "continuation", "value": "3.5", "adapter_version": "2"},
        {"kind": "abandon", "adapter_version": "2"}]
    for e in ev:
        series.add({"m": bucket}, "m", series.event_increments(e))
    series.add({"m": bucket}, "m", series.event_increments({"kind": "dwell", "value": "2608.7",
                                                              "adapter_version": "2"}, words=10))
    for state in ("rewarded", "rewarded", "defaulted", "excluded"):
        series.add({"m": bucket}, "m", series.reward_increments(reward("2", 0.1, state=state), None))
    out = series.series([(60, bucket), (120, {})], step_s=60)
    assert out["t"] == [60, 120]
    sig = {k: v[0] for k, v in out["signals"].items()}
    assert sig["thumbs_up_rate"] == 0.5 and sig["mean_rating"] == 4.0
    assert sig["copy_rate"] == sig["regenerate_rate"] == sig["continuation_rate"] == sig["abandon_rate"] == 0.25
    assert sig["dwell_ratio"] == pytest.approx(1.0, rel=1e-3)  # 10 words at 230 wpm = 2.6087 s
    assert out["coverage"] == [0.5, None]
    assert out["events_per_s"][0] == pytest.approx(12 / 60)
    assert out["versions"]["2"]["n"] == [2, 0] and out["versions"]["2"]["mean"][1] is None


def test_latency_histogram_buckets_are_cumulative():
    inc = series.latency_bucket_increments(20.0)
    assert "latency_le_15|*" not in inc and inc["latency_le_30|*"] == inc["latency_le_3600|*"] == 1.0
    assert inc["latency_count|*"] == 1.0 and inc["latency_total|*"] == 20.0


def test_sparkline_scale_and_gaps():
    assert series.sparkline([-1.0, 0.0, 1.0, None, 5.0]) == "▁▅█ █"


def test_version_under_watch_prefers_the_canary_and_needs_a_published_version():
    versions = {"1": {"state": "published", "parent": "base"}, "2": {"state": "published", "parent": "1"},
                "3": {"state": "rejected", "parent": "2"}}
    w = version_under_watch({"stable": "1", "canary": "2", "versions": versions})
    assert (w.version, w.parent, w.role) == ("2", "1", "canary")
    w = version_under_watch({"stable": "2", "canary": "", "versions": versions})
    assert (w.version, w.parent, w.role) == ("2", "1", "stable")
    # back on 1 after a rollback from 2: an operator's choice, not a new version to judge
    assert version_under_watch({"stable": "1", "canary": "", "versions": versions}) is None
    assert version_under_watch({"stable": "base", "canary": "", "versions": versions}) is None
    assert version_under_watch({"stable": "base", "canary": "3", "versions": versions}) is None


def test_detectors_persist_between_batches_and_report_the_window():
    params = {"warmup": 20, "threshold": 5.0, "k": 0.5}
    good = [("reward", 0.8 if i % 5 else -0.2, float(i)) for i in range(40)]
    states, alarms = run_detectors({}, good, params)
    assert not alarms and states["reward"]["since"] == 0.0
    bad = [("reward", -1.0, 100.0 + i) for i in range(20)]
    states2, alarms = run_detectors(states, bad, params)
    assert len(alarms) == 1
    result, since, until = alarms[0]
    assert result.direction == "drop" and since == 0.0 and 100.0 <= until < 120.0
    assert states2["reward"]["since"] == until  # the detector restarted there


def test_final_rewards_feed_per_reply_signal_rates_to_the_detectors():
    from worker.ops.series import detector_values
    fields = {"state": "rewarded", "reward": "0.8", "components": "continuation,copy,thumbs"}
    values = dict(detector_values(fields, stream="rewards"))
    assert values == {"reward": 0.8, "continuation_rate": 1.0, "regenerate_rate": 0.0, "copy_rate": 1.0,
                      "abandon_rate": 0.0}
    excluded = dict(detector_values({"state": "excluded", "reward": "", "components": "abandon"}, stream="rewards"))
    assert "reward" not in excluded and excluded["abandon_rate"] == 1.0
