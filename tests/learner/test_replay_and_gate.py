"""A run replays the newest final rewards (within the staleness cap), stale replayed tokens
cannot blow up the policy gradient, and a gate without enough evidence publishes as canary
instead of deciding on noise. Real Redis; the tiny model where a run trains."""
from __future__ import annotations

import json

import pytest
import redis
import torch

from core.registry import Registry
from learner.config import GateSettings, ReplaySettings, TrainConfig
from learner.dataset import build_dataset
from learner.losses import clipped_pg_loss
from learner.runner import run_once
from tests.support.learner import NO_PROBE, QUICK_STEP, fake, favoured, write_logged
from worker.rewards.config import RewardConfig

ALL_USERS = RewardConfig(max_user_share=1.0)
QUICK = TrainConfig(safety=NO_PROBE, minibatch_size=8, gate=GateSettings(holdout_share=0.25, cf_margin=2.0, cf_min_ess=1.0),
                    min_samples=4, step=QUICK_STEP)


def test_dual_clip_truncates_the_ratio_of_a_token_with_a_negative_advantage():
    new = torch.tensor([[2.0, 0.0]], requires_grad=True)    # token 0: ratio e^2 ~ 7.4 vs behavior
    behavior = torch.tensor([[0.0, 0.0]])
    adv, mask = torch.tensor([-1.0]), torch.ones(1, 2)
    plain, _ = clipped_pg_loss(new, behavior, adv, mask)
    capped, _ = clipped_pg_loss(new, behavior, adv, mask, dual_clip=3.0)
    assert float(plain) == pytest.approx((7.389 + 1.0) / 2, rel=1e-3)   # unbounded in the ratio
    assert float(capped) == pytest.approx((3.0 + 1.0) / 2, rel=1e-6)    # token 0 counts 3 x |A| at most
    capped.backward()
    assert float(new.grad[0, 0]) == 0.0                                 # and pushes no gradient


@pytest.mark.integration
def test_a_run_replays_older_rewards_within_the_staleness_cap(rdb, keys):
    old = write_logged(rdb, keys, [fake(i, f"u{i}") for i in range(3)], lambda it: 0.5, version="base")
    rdb.set(keys.learn_cursor, old[-1])   # a previous run consumed these
    write_logged(rdb, keys, [fake(i, f"u{i}") for i in range(3, 5)], lambda it: 0.5, version="1")
    cfg = TrainConfig(gate=GateSettings(holdout_share=0.0), replay=ReplaySettings(window=100, ratio=2.0),
                      max_staleness=3)
    data = build_dataset(rdb, keys, cfg, ALL_USERS, newest_version=1)
    assert sorted(s.reply_id for s in data.train) == ["x0", "x1", "x2", "x3", "x4"]
    assert data.replayed == 3 and data.read == 2          # 2 new entries trigger; 3 replayed
    # the replay sample is bounded by the new data: one older reply per new one
    one_each = build_dataset(rdb, keys, TrainConfig(gate=GateSettings(holdout_share=0.0),
                                                    replay=ReplaySettings(window=100), max_staleness=3),
                             ALL_USERS, newest_version=1)
    assert one_each.replayed == 2 and one_each.dropped["not_replayed"] == 1
    # the staleness cap still holds: base (0) is 3 versions behind 3 > max_staleness 2
    stale = build_dataset(rdb, keys, TrainConfig(gate=GateSettings(holdout_share=0.0),
                                                 replay=ReplaySettings(window=100), max_staleness=2),
                          ALL_USERS, newest_version=3)
    assert [s.reply_id for s in stale.train] == ["x3", "x4"] and stale.dropped["stale"] == 3
    # no pool, no replay
    assert build_dataset(rdb, keys, TrainConfig(gate=GateSettings(holdout_share=0.0), replay=ReplaySettings(window=0)), ALL_USERS, 1).replayed == 0


@pytest.mark.integration
def test_below_the_ess_floor_the_gate_publishes_as_canary_whatever_the_mode(settings, keys, logged):
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    write_logged(r, keys, logged, lambda i: 1.0 if favoured(i) else -1.0)
    cfg = TrainConfig(**{**QUICK.to_dict(), "gate": {**QUICK.to_dict()["gate"], "cf_min_ess": 1e6},
                         "reward_model": {"enabled": False}})
    assert settings.publish_mode == "stable"
    result = run_once(settings, cfg, progress=False)
    assert result.state == "published", result.reason
    gate = result.stats["gate"]
    assert gate["canary"] is True and any("published as canary" in n for n in gate["notes"])
    st = Registry(r, keys, settings.data_dir).state()
    assert st["canary"] == "1" and st["stable"] == "base"   # the live comparison decides from here
    r.close()


@pytest.mark.integration
def test_unscored_replies_are_left_out_while_the_reward_model_is_not_trusted(settings, keys, logged):
    """Every labelled reply was liked: no negative example, no AUROC, so the model is trained and
    kept but not trusted, and the unscored replies stay out of training."""
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    labelled, unsignalled = logged[:18], logged[18:]
    write_logged(r, keys, labelled, lambda i: 1.0)
    for item in labelled:   # the ledger's components, which the reward model learns from
        r.hset(keys.reward(item.reply_id), "components", json.dumps({"thumbs": 1.0}))
    for item in unsignalled:   # a reply hash and an 'unscored' final entry (no_signal_policy = "model")
        r.hset(keys.reply(item.reply_id), mapping={
            "reply_id": item.reply_id, "user_id": item.user_id, "prompt_ids": json.dumps(item.prompt_ids),
            "token_ids": json.dumps(item.token_ids), "logprobs": json.dumps(item.logprobs),
            "params": json.dumps(item.params.to_dict()), "adapter_version": "base", "opt_out": "0"})
        r.xadd(keys.rewards, {"reply_id": item.reply_id, "user_id": item.user_id, "adapter_version": "base",
                              "state": "unscored", "reward": "", "opt_out": "0"})
    result = run_once(settings, QUICK, progress=False)
    note = result.stats["reward_model"]
    assert note["used"] is False and "AUROC" in note["why"], note
    assert note["metrics"]["liked"]["auroc"] is None
    assert (settings.data_dir / "reward_model" / "manifest.json").exists()   # trained and kept all the same
    assert result.stats["dataset"]["unscored"] >= 1                          # seen, and left out
    assert result.stats["samples_used"] <= len(labelled)
    r.close()
