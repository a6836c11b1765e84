"""What a run costs is bounded by its new data, not the history, and a learner process's memory
stays flat across runs. Counted, not timed: samples trained, reward-model feature extractions,
forward passes, optimizer steps; resident memory read from /proc. Real Redis, the tiny model."""
from __future__ import annotations

import dataclasses
import json

import pytest

from core.keys import Keys
from core.sampling import SamplingParams
from core.settings import Settings
from learner.config import GateSettings, RewardModelSettings, StepSettings, TrainConfig
from learner.policy import LOADS
from learner.runner import run_once
from learner.tasks import check_and_train
from tests.support.learner import NO_PROBE, Logged, write_logged

pytestmark = pytest.mark.integration

CFG = TrainConfig(safety=NO_PROBE, minibatch_size=8, gate=GateSettings(holdout_share=0.25, cf_min_ess=1.0, cf_margin=2.0),
                  reward_model=RewardModelSettings(min_auroc=0.0), min_samples=2,
                  step=StepSettings(mode="fixed", min_steps=2, kl_target=10.0))


def replies(n: int, tag: str) -> list[Logged]:
    params = SamplingParams(temperature=0.7, top_p=0.9)
    return [Logged(f"{tag}_{i}", f"u{i % 9}", [1, 2, 3 + i % 50], [40 + i % 300, 41, 42 + i % 7], [-1.0, -0.5, -0.7],
                   params) for i in range(n)]


def write_rewarded(rdb, keys: Keys, items: list[Logged], version: str = "base") -> None:
    """Final rewards with ledger components (so the reward model has labels to learn from)."""
    liked = lambda item: int(item.reply_id.rsplit("_", 1)[1]) % 2 == 0
    write_logged(rdb, keys, items, lambda item: 1.0 if liked(item) else -1.0, version=version)
    for item in items:
        rdb.hset(keys.reward(item.reply_id), "components", json.dumps({"thumbs": 1.0 if liked(item) else -1.0}))


def cost_with_history(settings: Settings, rdb, history: int) -> dict:
    """The second run's cost: a first run consumes `history` rewards, then 12 new ones arrive. (No
    held-out share: the gate's own reads of a hashed split would blur the counts.)"""
    keys = Keys(settings.prefix)
    cfg = dataclasses.replace(CFG, gate=dataclasses.replace(CFG.gate, holdout_share=0.0))
    write_rewarded(rdb, keys, replies(history, "h"))
    first = run_once(settings, cfg, progress=False)
    assert first.state == "published", first.reason
    write_rewarded(rdb, keys, replies(12, "n"), version="1")
    second = run_once(settings, cfg, progress=False)
    assert second.state == "published", second.reason
    assert second.stats["parent"] == "1"   # it continued the version the history trained
    return second.stats["cost"]


def test_ten_times_the_history_costs_at_most_one_and_a_half_times(settings, rdb, tmp_path):
    small = cost_with_history(settings, rdb, 16)
    other = Settings(**{**settings.__dict__, "prefix": settings.prefix + "big:", "data_dir": tmp_path / "big"})
    big = cost_with_history(other, rdb, 160)
    print("cost, history 16:", small, "history 160:", big)
    assert small["rewards_read"] == big["rewards_read"] == 12
    for name in ("samples_trained", "optimizer_steps", "forward_passes", "feature_extractions"):
        assert big[name] <= 1.5 * small[name], (name, small, big)
    assert 0 < big["feature_extractions"] <= 12 + 1      # the new replies; the history's features are cached


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def test_ten_runs_in_one_process_keep_resident_memory_flat(settings, rdb):
    """The learn worker's task body, ten times in this process: the base model is loaded once and
    reused, each run's adapter taken out again, freed memory given back."""
    keys = Keys(settings.prefix)
    settings = Settings(**{**settings.__dict__, "min_samples": 4})
    loads_before = sum(LOADS.values())
    rss = []
    for k in range(10):
        write_rewarded(rdb, keys, replies(12, f"run{k}"), version=str(k) if k else "base")
        result = check_and_train(settings, cfg=CFG)
        assert result["state"] == "published", result
        rss.append(rss_mb())
    print("RSS after each run (MB):", [round(x) for x in rss])
    assert sum(LOADS.values()) - loads_before <= 1          # loaded at most once (not at all if cached already)
    assert max(rss[1:]) - rss[0] < 150, rss                 # flat within 150 MB after the first run
    assert rss[-1] - rss[4] < 50, rss                       # and not creeping up run after run
