"""The ops monitor against a real Redis (no Celery): idempotent folding into minute/hour
buckets, the live comparison (the sequential test), automatic rollback with its reason, the
verdict the learner reads, and the webhook."""
from __future__ import annotations

import time

import pytest

from core.keys import Keys
from core.registry import Registry, found_worse
from core.settings import Settings
from tests.support.records import add_rewards, seed_registry
from worker.ops.monitor import fold, ops_tick
from worker.ops.store import HOUR, MINUTE, OpsStore

pytestmark = pytest.mark.integration


@pytest.fixture
def hook(webhook):
    return webhook


def test_fold_is_idempotent_and_fills_minute_and_hour_buckets(rdb, prefix):
    keys = Keys(prefix)
    store = OpsStore(rdb, keys)
    at = time.time()
    add_rewards(rdb, keys, "1", [1.0, 0.0, -1.0], at)
    rdb.xadd(keys.events, {"kind": "reply", "reply_id": "x", "adapter_version": "1", "server_time": repr(at)})
    rdb.xadd(keys.events, {"kind": "thumbs", "value": "1", "reply_id": "x", "adapter_version": "1",
                           "server_time": repr(at)})
    rdb.hset(keys.reply("x"), mapping={"text": "one two three four", "ended_at": repr(at)})
    rdb.xadd(keys.events, {"kind": "dwell", "value": "2087", "reply_id": "x", "adapter_version": "1",
                           "server_time": repr(at)})  # 4 words at 230 wpm = 1.043 s expected
    res = fold(store, at)
    assert (res.rewards, res.events) == (3, 3)
    again = fold(store, at)
    assert (again.rewards, again.events) == (0, 0)  # the cursor moved with the increments
    minute = rdb.hgetall(keys.ops_bucket(MINUTE, int(at // 60 * 60)))
    hour = rdb.hgetall(keys.ops_bucket(HOUR, int(at // 3600 * 3600)))
    assert float(minute["reward_n|1"]) == float(hour["reward_n|1"]) == 3.0
    assert float(minute["thumbs_up|1"]) == 1.0 and float(minute["events|*"]) == 3.0
    assert float(minute["dwell_sum|1"]) == pytest.approx(2.0, rel=1e-3)
    assert float(minute["latency_sum|1"]) == pytest.approx(90.0, abs=0.01)
    assert 0 < rdb.ttl(keys.ops_bucket(MINUTE, int(at // 60 * 60))) <= 86400
    assert store.version_rewards("1") == [1.0, 0.0, -1.0]
    assert float(store.totals()["latency_le_30|*"]) == 3.0


def test_a_worse_canary_is_rolled_back_once_with_the_evidence(rdb, prefix, hook):
    url, posted = hook
    keys = Keys(prefix)
    store = OpsStore(rdb, keys)
    seed_registry(rdb, keys, stable="1", canary="2")
    settings = Settings(redis_url="redis://x", prefix=prefix, drift_min_samples=10, alert_webhook=url)
    registry = Registry(rdb, keys, "/nonexistent")
    at = time.time()
    add_rewards(rdb, keys, "1", [1.0, 0.5, 1.0, 0.8, 1.0] * 4, at)
    add_rewards(rdb, keys, "2", [1.0, -1.0, 1.0, 0.5] * 2, at)  # only 8: not enough yet
    out = ops_tick(store, registry, settings, at)
    assert out["rollback"] is None and registry.state()["canary"] == "2"
    assert store.verdicts()["2"]["reason"] == "insufficient_samples"
    assert store.verdicts()["2"]["decision"] == "keep" and not found_worse(registry.verdict("2"))
    minute = rdb.hgetall(keys.ops_bucket(MINUTE, int(at // 60 * 60)))
    assert minute["pending_depth|*"] == "0"  # the depth gauges are sampled every tick

    add_rewards(rdb, keys, "2", [-1.0, -0.5, -1.0, -1.0] * 4, at)
    out = ops_tick(store, registry, settings, at)
    assert out["rollback"] == "rolled back to 1"
    state = registry.state()
    assert (state["stable"], state["canary"], state["rollback_target"]) == ("1", "", "base")
    last = registry.history(1)[0]
    assert last["event"] == "rollback" and last["by"] == "drift-monitor"
    assert "found version 2 worse" in last["reason"] and "log-LR" in last["reason"]
    alarms = store.alarms()
    assert len(alarms) == 1 and alarms[0]["detector"] == "sprt" and alarms[0]["version"] == "2"
    assert alarms[0]["evidence"]["child"]["n"] == 24 and alarms[0]["since"] <= alarms[0]["until"]
    assert alarms[0]["statistic"] <= alarms[0]["threshold"] < 0
    assert posted and posted[0]["alarm"]["action"] == "rolled back to 1"
    assert found_worse(registry.verdict("2")) and registry.verdict("2")["decision"] == "rollback"

    # an operator promotes it again on purpose: the monitor does not overrule them
    registry.move("promote", "2", by="op", reason="I know better")
    assert ops_tick(store, registry, settings, at)["rollback"] is None
    assert registry.state()["stable"] == "2" and len(store.alarms()) == 1


def test_a_canary_is_compared_with_the_stable_and_decided_once(rdb, prefix):
    """A canary continued from an older canary (parent 1, stable base) is judged against what it
    would replace: the stable. Once decided it is not tested again."""
    keys = Keys(prefix)
    store = OpsStore(rdb, keys)
    seed_registry(rdb, keys, stable="base", canary="2")
    settings = Settings(redis_url="redis://x", prefix=prefix, drift_min_samples=8, canary_policy="hold")
    registry = Registry(rdb, keys, "/nonexistent")
    at = time.time()
    add_rewards(rdb, keys, "base", [0.0, 0.2, -0.2, 0.1] * 10, at)
    add_rewards(rdb, keys, "1", [-1.0] * 40, at)          # the parent: not the baseline of a canary
    add_rewards(rdb, keys, "2", [0.9, 1.0, 0.8, 1.0] * 6, at)
    ops_tick(store, registry, settings, at)
    verdict = store.verdicts()["2"]
    assert (verdict["parent"], verdict["decision"], verdict["final"]) == ("base", "promote", False)
    assert "hold" in verdict["action"] and registry.state()["canary"] == "2"   # an operator promotes
    promoting = Settings(redis_url="redis://x", prefix=prefix, drift_min_samples=8)
    add_rewards(rdb, keys, "2", [1.0], at)                  # a look happens on new rewards
    ops_tick(store, registry, promoting, at + 1)
    assert registry.state()["stable"] == "2" and store.verdicts()["2"]["final"] is True
    add_rewards(rdb, keys, "2", [-1.0] * 40, at)             # decided: not tested again
    ops_tick(store, registry, promoting, at + 2)
    assert store.verdicts()["2"]["at"] == at + 1 and not found_worse(registry.verdict("2"))


def test_alert_policy_only_alerts_and_a_dead_webhook_does_not_crash(rdb, prefix):
    keys = Keys(prefix)
    store = OpsStore(rdb, keys)
    seed_registry(rdb, keys, stable="2")
    settings = Settings(redis_url="redis://x", prefix=prefix, drift_min_samples=5, drift_policy="alert",
                        alert_webhook="http://127.0.0.1:9/nothing-listens")
    registry = Registry(rdb, keys, "/nonexistent")
    add_rewards(rdb, keys, "1", [1.0, 0.9] * 5, time.time())
    add_rewards(rdb, keys, "2", [-1.0, -0.9] * 5, time.time())
    out = ops_tick(store, registry, settings)
    assert out["rollback"] == "alert" and registry.state()["stable"] == "2"
    assert store.alarms()[0]["action"] == "alert"


def test_drift_cli_prints_versions_with_sparklines_and_alarms(rdb, prefix, redis_url, tmp_path):
    import subprocess
    import sys

    from tests.support.processes import REPO, base_env
    keys = Keys(prefix)
    store = OpsStore(rdb, keys)
    seed_registry(rdb, keys, stable="1", canary="2")
    settings = Settings(redis_url=redis_url, prefix=prefix, drift_min_samples=5)
    now = time.time()
    for minute in range(5):
        add_rewards(rdb, keys, "1", [0.9, 1.0, 0.8], now - 300 + minute * 60)
        add_rewards(rdb, keys, "2", [-0.9, -1.0], now - 300 + minute * 60)
    assert ops_tick(store, Registry(rdb, keys, tmp_path), settings)["rollback"] == "rolled back to 1"
    env = base_env(redis_url, prefix, tmp_path)
    out = subprocess.run([sys.executable, "-m", "service.cli", "drift", "--minutes", "10"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line[:1].isdigit()}
    assert "+0.900" in rows["1"] and "15" in rows["1"] and "█" in rows["1"]
    assert "-0.950" in rows["2"] and "rolled back to 1" in rows["2"] and "▁" in rows["2"]
    assert "sprt reward v2" in out.stdout and "stable 1" in out.stdout


def test_a_sequential_detector_alarm_is_stored_counted_and_resumes_across_folds(rdb, prefix):
    keys = Keys(prefix)
    store = OpsStore(rdb, keys)
    params = {"warmup": 30, "threshold": 5.0, "k": 0.5}
    at = time.time()
    add_rewards(rdb, keys, "1", [1.0, 0.6, 0.8] * 10, at - 120)
    assert fold(store, at, detector_params=params).alarms == []
    state = store.detector_states()["reward"]
    assert state["detector"]["detector"] == "cusum" and state["detector"]["index"] == 30  # persisted
    add_rewards(rdb, keys, "1", [-1.0] * 10, at - 60)
    alarms = fold(store, at, detector_params=params).alarms
    assert [(a["detector"], a["metric"], a["direction"]) for a in alarms] == [("cusum", "reward", "drop")]
    assert alarms[0]["since"] == pytest.approx(at - 120) and alarms[0]["until"] == pytest.approx(at - 60)
    stored = store.alarms()
    assert stored[0]["evidence"]["mean_after"] == -1.0 and stored[0]["action"] == "alert"
    assert float(store.totals()["alarms:cusum:reward|*"]) == 1.0
