"""/ops, its API and the reward/drift figures on /metrics, against a real server (tiny model)
and Redis holding folded series; the page in headless Chromium."""
from __future__ import annotations

import json
import re
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.keys import Keys
from tests.support.clients import get, http
from tests.support.processes import ADMIN, REPO
from tests.support.waiting import wait_for
from worker.ops.monitor import fold
from worker.ops.store import OpsStore

pytestmark = pytest.mark.integration


# the gate's safety probe figures as the registry keeps them per version (learner/probe_run.py)
PROBE = {"decision": "flag", "reason": "safety probe: relevance on the ordinary probes -0.60 is more than 0.5 below",
         "unsafe_parent": 0.0, "unsafe_new": 0.0278, "p_value": 0.5, "relevance_parent": 0.1, "relevance_new": -0.6,
         "n": 36, "parent": "1"}


def seed(rdb, prefix: str) -> None:
    """Two published versions (stable 1, canary 2), ten minutes of rewards and events, one alarm."""
    keys = Keys(prefix)
    now = time.time()
    versions = {"1": {"version": 1, "state": "published", "parent": "base", "created": now - 900},
                "2": {"version": 2, "state": "published", "parent": "1", "created": now - 300,
                      "probe": PROBE}}
    rdb.hset(keys.adapters, mapping={"stable": "1", "canary": "2", "canary_share": "0.5", "rollback_target": "base",
                                     "next_version": "2", "versions": json.dumps(versions)})
    rdb.xadd(keys.adapter_history, {"event": "publish", "version": "2", "by": "test", "reason": "seeded",
                                    "at": repr(now - 300)})
    for minute in range(10):
        t = now - 600 + minute * 60
        for i in range(4):
            v = "2" if minute >= 5 and i % 2 else "1"
            rid = f"r{minute}_{i}"
            rdb.hset(keys.reply(rid), mapping={"ended_at": repr(t - 20), "text": "one two three"})
            rdb.xadd(keys.events, {"kind": "reply", "reply_id": rid, "adapter_version": v, "server_time": repr(t)})
            rdb.xadd(keys.events, {"kind": "thumbs", "value": "1" if v == "1" else "-1", "reply_id": rid,
                                   "adapter_version": v, "server_time": repr(t)})
            if v == "2":   # reasons people gave: counted per version on the page and /metrics
                rdb.xadd(keys.events, {"kind": "reasons", "tags": '["unsafe", "too_long"]', "reply_id": rid,
                                       "adapter_version": v, "server_time": repr(t)})
            rdb.xadd(keys.rewards, {"reply_id": rid, "adapter_version": v, "state": "rewarded",
                                    "reward": "0.8" if v == "1" else "-0.6", "finalized_at": repr(t)})
    rdb.zadd(keys.rewards_pending, {"waiting1": now + 600, "waiting2": now + 600})
    store = OpsStore(rdb, keys)
    fold(store, now)
    store.snapshot_depths(now)
    store.add_alarm({"at": now - 60, "detector": "welch", "metric": "reward", "version": "2", "direction": "drop",
                     "message": "seeded alarm", "evidence": {}, "since": now - 300, "until": now - 60,
                     "action": "alert"})


@pytest.fixture
def ops_server(server_factory, rdb, prefix):
    seed(rdb, prefix)
    return server_factory(prefix=prefix)


def test_ops_page_and_api_need_the_operator_token(ops_server):
    assert get(ops_server.url + "/ops")[0] == 401
    assert get(ops_server.url + "/ops?token=wrong")[0] == 401
    assert http("GET", ops_server.url + "/ops/api/state")[0] == 401
    assert http("GET", ops_server.url + "/ops/api/state", token="wrong")[0] == 401
    status, body = http("GET", ops_server.url + "/ops/api/state?minutes=30", token=ADMIN)
    assert status == 200
    assert set(body["series"]["versions"]) == {"1", "2"}
    assert [a["version"] for a in body["adapters"]] == ["2", "1", "base"]
    v2 = body["adapters"][0]
    assert v2["role"] == "canary" and v2["samples"] == 10 and v2["mean_reward"] == pytest.approx(-0.6)
    assert v2["probe"] == PROBE and body["adapters"][1]["probe"] is None      # version 1 predates the probe
    assert body["alarms"][0]["message"] == "seeded alarm"
    assert body["depths"] == {"pending": 2, "dead_letters": 0} and 2 in body["series"]["pending"]


def test_metrics_parse_and_follow_prometheus_conventions(ops_server):
    status, text = get(ops_server.url + "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("rewardloop_rewards_final", "rewardloop_signal_events", "rewardloop_reward_latency_seconds",
                 "rewardloop_reward_mean", "rewardloop_signal_mix", "rewardloop_reward_coverage_ratio",
                 "rewardloop_rewards_pending", "rewardloop_dead_letters", "rewardloop_drift_alarms",
                 "rewardloop_drift_rollbacks", "rewardloop_drift_statistic", "rewardloop_replies"):
        assert name in families, sorted(families)
    assert families["rewardloop_ops_redis_up"].samples[0].value == 1
    for fam in families.values():
        assert re.fullmatch(r"rewardloop_[a-z0-9_]+", fam.name), fam.name
        for s in fam.samples:
            assert not {"user", "user_id", "reply_id", "session_id"} & set(s.labels), s
            if fam.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
        if fam.type == "histogram":
            assert fam.name.endswith("_seconds")
    final = {(s.labels["adapter_version"], s.labels["state"]): s.value
             for s in families["rewardloop_rewards_final"].samples if s.name.endswith("_total")}
    assert final[("1", "rewarded")] == 30 and final[("2", "rewarded")] == 10
    mean = {s.labels["adapter_version"]: s.value for s in families["rewardloop_reward_mean"].samples}
    assert mean["1"] == pytest.approx(0.8) and mean["2"] == pytest.approx(-0.6)
    alarms = families["rewardloop_drift_alarms"].samples
    assert any(s.labels == {"detector": "welch", "metric": "reward"} and s.value == 1 for s in alarms)
    lat = {s.labels.get("le"): s.value for s in families["rewardloop_reward_latency_seconds"].samples
           if s.name.endswith("_bucket")}
    assert lat["15.0"] == 0 and lat["30.0"] == lat["+Inf"] == 40

    # the example alert rules and dashboard only use figures that exist
    sample_names = {s.name for f in families.values() for s in f.samples}
    for path in (REPO / "deploy" / "prometheus-alerts.yml", REPO / "deploy" / "grafana-dashboard.json"):
        used = set(re.findall(r"rewardloop_[a-z0-9_]+", path.read_text()))
        assert used and used <= sample_names | set(families), (path.name, used - sample_names)


@pytest.mark.browser
def test_ops_page_charts_and_buttons_in_chromium(ops_server, page, rdb, prefix, tmp_path):
    page.on("dialog", lambda d: d.accept())
    page.goto(ops_server.url + "/ops?token=" + ADMIN)
    assert page.url.endswith("/ops")  # the token left the address bar; the cookie stays
    page.wait_for_function("window.opsCharts && window.opsCharts.reward && window.opsCharts.signals", timeout=20000)
    points = page.evaluate("""() => {
        const u = window.opsCharts.reward.u;
        const count = (i) => u.data[i].filter(v => v !== null).length;
        return {labels: u.series.map(s => s.label), v1: count(u.series.findIndex(s => s.label === 'v 1')),
                v2: count(u.series.findIndex(s => s.label === 'v 2')), canvas: !!document.querySelector('#chart-reward canvas'),
                signals: window.opsCharts.signals.u.data[1].filter(v => v !== null).length,
                pending: window.opsCharts.depths.u.data[1].filter(v => v !== null)}
    }""")
    assert points["canvas"] and points["v1"] >= 9 and points["v2"] >= 4 and points["signals"] >= 9, points
    assert points["pending"] == [2], points
    storage = page.locator("#storage").inner_text()  # the Redis memory / archive line
    assert "Redis memory" in storage and "archive: no run yet" in storage, storage
    assert page.locator("#tags thead th").all_text_contents() == ["version", "too_long", "unsafe"]
    assert page.locator("#tags tr[data-version='2'] td").all_text_contents() == ["10", "10"]
    probe = page.locator("#adapters tr[data-version='2'] td.probe")                 # the safety probe column
    assert probe.inner_text() == "flag · unsafe 0% → 3% (p 0.50) · rel 0.10 → -0.60"
    assert "relevance" in probe.get_attribute("title") and "probe-flag" in probe.get_attribute("class")
    link = page.locator("#timeline a.sessions").first
    assert "/admin/sessions?since=" in link.get_attribute("href")
    page.screenshot(path=str(tmp_path / "ops.png"), full_page=True)
    assert (tmp_path / "ops.png").stat().st_size > 10_000

    keys = Keys(prefix)
    page.click("button.promote[data-version='2']")
    wait_for(lambda: rdb.hget(keys.adapters, "stable") == "2", 10, "promote from the page")
    page.click("#rollback")
    wait_for(lambda: rdb.hget(keys.adapters, "stable") == "1", 10, "rollback from the page")
    assert page.errors == []
