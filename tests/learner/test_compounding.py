"""Versions compound: a run continues from the newest version that serves people -- the canary,
unless the live comparison found it worse. Real Redis, the real ops monitor, the tiny model."""
from __future__ import annotations

import json
import time

import pytest

from core.registry import Registry, found_worse
from core.settings import Settings
from learner.config import GateSettings, RewardModelSettings, TrainConfig
from learner.runner import run_once
from tests.support.learner import NO_PROBE, QUICK_STEP, favoured, write_logged
from worker.ops.monitor import ops_tick
from worker.ops.store import OpsStore

pytestmark = pytest.mark.integration

QUICK = TrainConfig(safety=NO_PROBE, minibatch_size=8, gate=GateSettings(holdout_share=0.25, cf_margin=2.0, cf_min_ess=1.0),
                    reward_model=RewardModelSettings(enabled=False), min_samples=2, step=QUICK_STEP)


def reward(item) -> float:
    return 1.0 if favoured(item) else -1.0


def live_rewards(rdb, keys, version: str, values: list[float]) -> None:
    """Rewarded replies of `version` as the ops monitor folds them (no token ids: the learner drops them)."""
    at = time.time()
    for i, v in enumerate(values):
        rid = f"live{version}_{i}_{time.monotonic_ns()}"
        rdb.hset(keys.reply(rid), mapping={"ended_at": repr(at - 30), "text": "a b c"})
        rdb.xadd(keys.rewards, {"reply_id": rid, "adapter_version": version, "state": "rewarded",
                                "reward": repr(v), "finalized_at": repr(at)})


def test_a_canary_is_continued_from_and_one_found_worse_is_rolled_back_and_not(settings, keys, rdb, logged):
    settings = Settings(**{**settings.__dict__, "publish_mode": "canary", "drift_min_samples": 5})
    registry = Registry(rdb, keys, settings.data_dir)
    write_logged(rdb, keys, logged[:8], reward)
    first = run_once(settings, QUICK, progress=False)
    assert first.state == "published" and registry.state()["canary"] == "1"

    # the canary's own replies come back rewarded: the next run continues from it
    write_logged(rdb, keys, logged[8:16], reward, version="1")
    second = run_once(settings, QUICK, progress=False)
    assert second.state == "published" and second.stats["parent"] == "1", second.stats.get("parent_choice")
    assert "canary 1" in second.stats["parent_choice"]
    st = registry.state()
    assert st["canary"] == "2" and st["versions"]["1"]["state"] == "published"   # v1 kept, v2 its child

    # the live comparison finds v2 worse than the stable it would replace (base) and drops it
    # (REWARDLOOP_DRIFT_POLICY=rollback); v1, a canary never judged, does not become stable by the way
    live_rewards(rdb, keys, "base", [1.0, 0.8, 0.9, 1.0, 0.7, 0.9])
    live_rewards(rdb, keys, "1", [1.0, 0.8, 0.9, 1.0, 0.7, 0.9])
    live_rewards(rdb, keys, "2", [-1.0, -0.8, -0.9, -1.0, -0.7, -0.9] * 2)
    assert ops_tick(OpsStore(rdb, keys), registry, settings)["rollback"] == "rolled back to base"
    assert (registry.state()["stable"], registry.state()["canary"]) == ("base", "")
    assert found_worse(registry.verdict("2"))

    write_logged(rdb, keys, logged[16:], reward, version="2")
    third = run_once(settings, QUICK, progress=False)
    assert third.state == "published" and third.stats["parent"] == "base", third.stats.get("parent_choice")
    assert Registry.manifest_of(registry.version_dir(3)).parent == "base"


def test_a_canary_found_worse_but_kept_by_the_alert_policy_is_not_continued_from(rdb, keys, tmp_path):
    """Under REWARDLOOP_DRIFT_POLICY=alert the worse canary keeps serving, but no run builds on it."""
    versions = {"1": {"version": 1, "state": "published", "parent": "base"},
                "2": {"version": 2, "state": "published", "parent": "1"}}
    rdb.hset(keys.adapters, mapping={"stable": "1", "canary": "2", "canary_share": "0.1", "next_version": "2",
                                     "versions": json.dumps(versions)})
    for v in ("1", "2"):
        folder = tmp_path / "adapters" / f"v{v}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"")
    registry = Registry(rdb, keys, tmp_path)
    assert registry.training_parent()[0] == "2"                      # not judged yet: the canary
    rdb.hset(keys.ops_verdicts, "2", json.dumps({"alarm": False, "reason": "insufficient_samples"}))
    assert registry.training_parent()[0] == "2"                      # judged, not worse
    rdb.hset(keys.ops_verdicts, "2", json.dumps({"alarm": True, "action": "alert", "message": "worse"}))
    version, folder, why = registry.training_parent()
    assert (version, folder.name) == ("1", "v1") and "found worse" in why
    rdb.hset(keys.adapters, "canary", "")
    assert registry.training_parent()[:2] == ("1", folder)


def test_found_worse_reads_an_alarm_or_a_rollback_decision():
    assert found_worse({"alarm": True}) and found_worse({"decision": "rollback"}) and found_worse({"worse": True})
    assert not found_worse({}) and not found_worse({"alarm": False, "decision": "keep"})
