"""Learner runs end to end on the tiny model: the gate rejects, the lock fences, a killed run
leaves nothing behind."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis
import torch

from core.registry import Registry
from learner.config import GateSettings, TrainConfig
from learner.runner import run_once
from learner.tasks import check_and_train
from tests.support.learner import NO_PROBE, QUICK_STEP, favoured, write_logged
from tests.support.processes import REPO, base_env

pytestmark = pytest.mark.integration

QUICK = TrainConfig(safety=NO_PROBE, minibatch_size=8, gate=GateSettings(holdout_share=0.25, cf_margin=2.0, cf_min_ess=1.0),
                    min_samples=4, step=QUICK_STEP)


def reward(item) -> float:
    return 1.0 if favoured(item) else -1.0


@pytest.fixture
def r(settings):
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    client.close()


def assert_untouched(r, keys, settings) -> None:
    """Nothing published: no version folder, no registry hash or history, cursor unset."""
    folders = list((settings.data_dir / "adapters").glob("v*")) if (settings.data_dir / "adapters").exists() else []
    assert folders == []
    assert not r.exists(keys.adapters)
    assert r.xlen(keys.adapter_history) == 0
    assert r.get(keys.learn_cursor) is None


def poison(model) -> None:
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))


@pytest.mark.parametrize("case", ["nan", "kl"])
def test_gate_rejects_and_keeps_the_version_as_rejected(case, settings, keys, r, logged):
    ids = write_logged(r, keys, logged, reward)
    cfg = QUICK if case == "nan" else dataclasses.replace(QUICK, step=dataclasses.replace(QUICK_STEP, kl_target=1e-7))
    result = run_once(settings, cfg, progress=False, on_trained=poison if case == "nan" else None)

    assert result.state == "rejected" and result.version == 1
    assert ("non-finite" if case == "nan" else "over the budget") in result.reason
    st = Registry(r, keys, settings.data_dir).state()
    assert st["versions"]["1"]["state"] == "rejected" and st["versions"]["1"]["reason"] == result.reason
    assert st["stable"] == "base" and st["canary"] == ""  # pointers did not move
    manifest = Registry(r, keys, settings.data_dir).manifest(1)
    assert manifest.state == "rejected" and manifest.reason == result.reason
    assert r.get(keys.learn_cursor) == ids[-1]  # a rejected run consumes its samples


def test_killed_run_leaves_the_registry_as_it_was(settings, keys, r, logged, tmp_path):
    write_logged(r, keys, logged, reward)
    env = base_env(settings.redis_url, settings.prefix, settings.data_dir, REWARDLOOP_LEARN_LOCK_TTL_S="2",
                   REWARDLOOP_PUBLISH_MODE="stable")
    log_path = tmp_path / "train.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "train", "--once", "--set", "step.min_steps=1000",
                                 "--set", "step.max_epochs=500", "--set", "min_samples=4", "--set", "minibatch_size=4",
                                 "--set", "safety.enabled=false"],
                                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while b"train:" not in log_path.read_bytes() or b"step/s" not in log_path.read_bytes():
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "training did not start"
                time.sleep(0.2)
            os.kill(proc.pid, signal.SIGKILL)  # mid-training, a few steps in
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert_untouched(r, keys, settings)

    # the lock expires with its TTL; the next run trains on the same samples and publishes v1
    deadline = time.monotonic() + 10
    while r.exists(keys.learn_lock) and time.monotonic() < deadline:
        time.sleep(0.2)
    result = run_once(settings, QUICK, progress=False)
    assert result.state == "published" and result.version == 1


def test_two_triggers_at_once_give_one_run(settings, keys, r, logged):
    write_logged(r, keys, logged, reward)
    start = threading.Barrier(2)
    results: list[dict] = []

    def trigger():
        start.wait()
        results.append(check_and_train(settings, cfg=QUICK))

    threads = [threading.Thread(target=trigger) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(res["state"] for res in results) == ["busy", "published"], results
    st = Registry(r, keys, settings.data_dir).state()
    assert list(st["versions"]) == ["1"] and st["next_version"] == 1


def test_trigger_waits_for_enough_new_rewards(settings, keys, r, logged):
    write_logged(r, keys, logged[:3], reward)
    assert check_and_train(settings, cfg=QUICK)["state"] == "waiting"  # min_samples is 4
    assert_untouched(r, keys, settings)


@pytest.mark.parametrize("how", ["expired", "taken_over"])
def test_a_run_whose_lock_expired_cannot_publish(how, settings, keys, r, logged):
    write_logged(r, keys, logged, reward)

    def lose_lock(model):
        if how == "expired":
            r.delete(keys.learn_lock)  # what PX expiry does while the run is paused
        else:
            r.set(keys.learn_lock, str(r.incr(keys.learn_fence)))  # a newer run holds it now

    result = run_once(settings, QUICK, progress=False, on_trained=lose_lock)
    assert result.state == "lost_lock" and "lock" in result.reason
    assert_untouched(r, keys, settings)
    assert not list((settings.data_dir / "adapters").iterdir())  # staged folder removed too


def test_second_run_continues_from_the_stable_adapter(settings, keys, r, logged):
    write_logged(r, keys, logged[:12], reward)
    assert run_once(settings, QUICK, progress=False).version == 1
    write_logged(r, keys, logged[12:], reward, version="1")
    result = run_once(settings, QUICK, progress=False)
    assert result.state == "published" and result.version == 2
    assert result.stats["parent"] == "1"
    assert result.stats["samples_used"] < 12  # only the new rewards: the cursor moved


def test_the_running_baseline_carries_over_from_the_parent(settings, keys, r, logged):
    """Run 1 sees only punished replies, run 2 only favoured ones: with pg_baseline 'running'
    run 2's baseline is the mean over both runs (below its own all-good mean), read from
    v1's manifest."""
    cfg = TrainConfig(**{**QUICK.to_dict(), "pg": {"baseline": "running"}, "min_samples": 2, "replay": {"window": 0}})
    bad = [i for i in logged if not favoured(i)]
    good = [i for i in logged if favoured(i)]
    write_logged(r, keys, bad, reward)
    first = run_once(settings, cfg, progress=False)
    assert first.state == "published", first
    t1 = first.stats["training"]
    assert first.version == 1 and t1["baseline"] == pytest.approx(-1.0) and t1["lineage_reward_mean"] == -1.0
    write_logged(r, keys, good, reward, version="1")
    second = run_once(settings, cfg, progress=False)
    assert second.state == "published", second
    t2 = second.stats["training"]
    n1, n2 = t1["lineage_reward_count"], t2["lineage_reward_count"] - t1["lineage_reward_count"]
    assert t2["baseline"] == pytest.approx((-n1 + n2) / (n1 + n2)) and t2["baseline"] < 1.0


def test_dry_run_trains_and_gates_but_changes_nothing(settings, keys, r, logged):
    write_logged(r, keys, logged, reward)
    result = run_once(settings, QUICK, dry_run=True, progress=False)
    assert result.state == "dry_run" and result.stats["gate"]["passed"]
    assert result.stats["training"]["steps"] >= 1
    assert_untouched(r, keys, settings)
