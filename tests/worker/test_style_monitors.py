"""Reward-hacking monitors: reply style per version (length, refusals, ending with a question,
distinct-2) and an alarm when one drifts beyond its band while the reward rises."""
from __future__ import annotations

import time

import pytest

from core.keys import Keys
from core.registry import Registry
from core.settings import Settings
from tests.support.records import seed_registry
from worker.ops import series
from worker.ops.monitor import ops_tick
from worker.ops.store import OpsStore
from worker.ops.style import reply_style, style_drift, style_figures


def test_reply_style_counts_what_a_reply_looks_like():
    s = reply_style("I'm sorry, but I can't help with that. Can I help with anything else?")
    assert s["style_refusal"] == 1.0 and s["style_question"] == 1.0 and s["style_words"] == 14
    loop = reply_style("go go go go go go")
    assert loop["style_distinct2"] == pytest.approx(1 / 5)
    assert reply_style("Paris.")["style_refusal"] == 0.0


def _figs(words: float, n: int = 40) -> dict:
    return style_figures({"style_n": n, "style_words": words * n, "style_refusal": 0, "style_question": 0,
                          "style_distinct2": 0.9 * n})


def test_style_drift_fires_only_on_a_length_drift_with_a_rising_reward():
    assert style_drift(_figs(10), _figs(30), 0.1, 0.5) == ["mean reply length 10.0 -> 30.0 words"]
    assert style_drift(_figs(10), _figs(30), 0.5, 0.1) == []        # reward fell: the drift test's job
    assert style_drift(_figs(10), _figs(12), 0.1, 0.5) == []        # within the band
    assert style_drift(_figs(10, n=5), _figs(30, n=5), 0.1, 0.5) == []   # too few replies to say


@pytest.mark.integration
def test_the_monitor_raises_a_style_alarm_on_a_synthetic_length_drift(rdb, prefix):
    keys = Keys(prefix)
    store = OpsStore(rdb, keys)
    seed_registry(rdb, keys, stable="1", canary="2")
    settings = Settings(redis_url="redis://x", prefix=prefix, drift_min_samples=10)
    at = time.time()
    for version, reward, text in (("1", 0.2, "Paris is the capital."),
                                  ("2", 0.6, "Well, " + "let me tell you more about that, " * 8 + "Paris.")):
        for i in range(30):
            rid = f"st{version}_{i}_{time.monotonic_ns()}"
            rdb.hset(keys.reply(rid), mapping={"ended_at": repr(at - 30), "text": text})
            rdb.xadd(keys.rewards, {"reply_id": rid, "adapter_version": version, "state": "rewarded",
                                    "reward": repr(reward + 0.01 * (i % 3)), "finalized_at": repr(at)})
    ops_tick(store, Registry(rdb, keys, "/nonexistent"), settings, at)
    figs = series.figures(series.by_version(store.totals())["2"])["style"]
    assert figs["n"] == 30 and figs["mean_words"] > 30
    alarms = [a for a in store.alarms() if a["detector"] == "style"]
    assert len(alarms) == 1 and alarms[0]["version"] == "2" and "mean reply length" in alarms[0]["message"]
    ops_tick(store, Registry(rdb, keys, "/nonexistent"), settings, at + 1)   # raised once per version
    assert len([a for a in store.alarms() if a["detector"] == "style"]) == 1


@pytest.mark.integration
def test_a_canary_not_worse_than_its_parent_is_promoted_by_the_live_comparison(rdb, prefix):
    from tests.support.records import add_rewards
    keys = Keys(prefix)
    store = OpsStore(rdb, keys)
    seed_registry(rdb, keys, stable="1", canary="2")
    registry = Registry(rdb, keys, "/nonexistent")
    at = time.time()
    add_rewards(rdb, keys, "1", [0.2, 0.0, 0.4, 0.1] * 3, at)
    add_rewards(rdb, keys, "2", [0.5, 0.3, 0.6, 0.2] * 2, at)       # 8 < 10: not yet
    held = Settings(redis_url="redis://x", prefix=prefix, drift_min_samples=10)
    ops_tick(store, registry, held, at)
    assert registry.state()["canary"] == "2"
    add_rewards(rdb, keys, "2", [0.5, 0.3, 0.6, 0.2] * 3, at)       # 20: enough, and better
    hold = Settings(redis_url="redis://x", prefix=prefix, drift_min_samples=10, canary_policy="hold")
    ops_tick(store, registry, hold, at + 1)
    assert registry.state()["canary"] == "2"                        # 'hold': an operator decides
    add_rewards(rdb, keys, "2", [0.5], at)
    ops_tick(store, registry, held, at + 2)
    st = registry.state()
    assert st["stable"] == "2" and st["canary"] == "" and st["rollback_target"] == "1"
    last = rdb.xrevrange(keys.adapter_history, count=1)[0][1]
    assert last["event"] == "promote" and last["by"] == "drift-monitor" and "live comparison" in last["reason"]
