"""The learner's own replies to logged prompts (learner/onpolicy.py): drawn with the serving
sampler from the parent adapter, so their behavior log-probs are exact; rewarded by the reward
model; added to training only. The tiny model, a real RewardModel, real Redis for the run."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import redis
import torch

from core.sampling import SamplingParams, behavior_logprobs
from learner.config import GateSettings, OnPolicySettings, RewardModelSettings, TrainConfig
from learner.dataset import Sample
from learner.onpolicy import add_replies, pick_prompts, sample_replies
from learner.reward_model import MAIN, RewardModel, extract_features
from learner.runner import run_once
from tests.support.learner import NO_PROBE, QUICK_STEP, favoured, write_logged

PARAMS = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8, seed=0)
NO_STOP: set[int] = set()


def _sample(i: int, prompt: list[int], params: SamplingParams = PARAMS, reply=(5, 6, 7)) -> Sample:
    return Sample(reply_id=f"r{i}", user_id=f"u{i}", prompt_ids=prompt, reply_ids=list(reply),
                  behavior_logp=[-1.0] * len(reply), reward=0.5, adapter_version="base", params=params)


@torch.no_grad()
def _recomputed(model, prompt: list[int], reply: list[int], params: SamplingParams) -> list[float]:
    ids = torch.tensor([prompt + reply])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:len(prompt) - 1 + len(reply)]   # [T, V]
    return behavior_logprobs(logits, torch.tensor(reply), params).tolist()


def test_sampled_replies_carry_the_log_probs_a_server_would_have_logged(tiny, tiny_policy, logged):
    other = next(item.prompt_ids for item in logged if len(item.prompt_ids) != len(logged[0].prompt_ids))
    prompts = [logged[0].prompt_ids, other, logged[0].prompt_ids]   # two lengths: the left padding is exercised
    out = sample_replies(tiny_policy, prompts, [PARAMS] * 3, max_new_tokens=8, stop_ids=NO_STOP, seeds=[1, 2, 3])
    for prompt, (reply, logp) in zip(prompts, out):
        assert len(reply) == 8 and all(np.isfinite(logp))
        assert logp == pytest.approx(_recomputed(tiny.model, prompt, reply, PARAMS), abs=1e-4)
    again = sample_replies(tiny_policy, prompts, [PARAMS] * 3, max_new_tokens=8, stop_ids=NO_STOP, seeds=[1, 2, 3])
    assert again == out                                   # seeded: a run can be reproduced
    assert out[0][0] != out[2][0]                         # one prompt, two seeds: two replies
    # a row's own max_new_tokens caps it
    short = sample_replies(tiny_policy, prompts[:1], [SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=3)],
                           max_new_tokens=8, stop_ids=NO_STOP, seeds=[1])
    assert short[0][0] == out[0][0][:3]
    # a stop token ends the reply and is kept (the learner must learn when to stop)
    stop = {out[0][0][2]}
    cut = sample_replies(tiny_policy, prompts[:1], [PARAMS], max_new_tokens=8, stop_ids=stop, seeds=[1])
    assert cut[0][0] == out[0][0][:3] and cut[0][1] == pytest.approx(out[0][1][:3], abs=1e-5)


def test_prompts_are_the_newest_distinct_sampled_ones():
    greedy = SamplingParams(temperature=0.0)
    train = [_sample(0, [1, 2]), _sample(1, [3]), _sample(2, [1, 2]), _sample(3, [4], params=greedy), _sample(4, [5])]
    picked = pick_prompts(train, 10)
    assert [s.reply_id for s in picked] == ["r4", "r2", "r1"]   # greedy [4] skipped, [1, 2] once (newest)
    assert [s.reply_id for s in pick_prompts(train, 2)] == ["r4", "r2"]


def test_added_replies_are_rewarded_by_the_reward_model_and_marked(tiny, tiny_policy, logged):
    base = [_sample(i, logged[i].prompt_ids, reply=logged[i].token_ids) for i in range(3)]
    feats = extract_features(tiny.model, [(s.prompt_ids, s.reply_ids) for s in base], tiny.device)
    rng = np.random.default_rng(0)
    rm = RewardModel(mean=np.zeros(feats.shape[1]), std=np.ones(feats.shape[1]),
                     weights={MAIN: rng.normal(size=feats.shape[1]) * 0.05}, bias={MAIN: 0.0})
    train = list(base)
    policy = dataclasses.replace(tiny_policy, stop_ids=NO_STOP)
    note = add_replies(policy, train, rm, n=3, max_prompts=2, reward_weight=0.5, parent="base", run=1,
                       seed=0, max_reply_tokens=512)
    new = train[3:]
    assert note["added"] == len(new) == 6 and note["prompts"] == 2 and note["seconds"] > 0
    assert all(s.onpolicy and s.adapter_version == "base" for s in new) and not any(s.onpolicy for s in base)
    assert [s.prompt_ids for s in new] == [base[2].prompt_ids] * 3 + [base[1].prompt_ids] * 3
    assert all(len(s.reply_ids) <= max(len(b.reply_ids) for b in base) for s in new)  # no longer than logged
    want = rm.reward(extract_features(tiny.model, [(s.prompt_ids, s.reply_ids) for s in new], tiny.device)) * 0.5
    assert [s.reward for s in new] == pytest.approx(want.tolist(), abs=1e-6)
    assert len({s.reply_id for s in train}) == len(train)
    off = list(base)
    assert add_replies(policy, off, rm, n=0, max_prompts=2, reward_weight=0.5, parent="base", run=1, seed=0,
                       max_reply_tokens=512)["added"] == 0
    assert off == base


@pytest.mark.parametrize("name,bad", [("n", -1), ("n", 17), ("n", 1.5), ("n", True), ("prompts", -1),
                                      ("prompts", 257), ("prompts", "8")])
def test_onpolicy_settings_are_validated(name, bad):
    with pytest.raises(ValueError, match=f"OnPolicySettings.{name} "):
        TrainConfig(onpolicy={name: bad})


@pytest.mark.integration
def test_a_run_with_a_trusted_reward_model_trains_on_its_own_replies_too(settings, keys, logged):
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    write_logged(r, keys, logged, lambda i: 1.0 if favoured(i) else -1.0)
    for item in logged:   # the ledger's components, which the reward model learns from
        r.hset(keys.reward(item.reply_id), "components", json.dumps({"thumbs": 1.0 if favoured(item) else -1.0}))
    cfg = TrainConfig(safety=NO_PROBE, minibatch_size=8, gate=GateSettings(holdout_share=0.25, cf_margin=2.0, cf_min_ess=1.0),
                      reward_model=RewardModelSettings(min_auroc=0.0), onpolicy=OnPolicySettings(n=2, prompts=3),
                      min_samples=4, step=QUICK_STEP)
    off = run_once(settings, dataclasses.replace(cfg, onpolicy=OnPolicySettings(n=0, prompts=3)), progress=False,
                   dry_run=True)
    assert "onpolicy" not in off.stats["reward_model"]
    result = run_once(settings, cfg, progress=False)
    assert result.state == "published", result.reason
    note = result.stats["reward_model"]
    assert note["used"] is True, note
    assert note["onpolicy"]["added"] == 6 and note["onpolicy"]["prompts"] == 3
    assert result.stats["dataset"]["onpolicy"] == 6 and result.stats["samples_used"] == result.stats["dataset"]["train"]
    assert result.stats["training"]["samples"] == result.stats["samples_used"]
    assert result.stats["holdout"] == result.stats["dataset"]["holdout"]   # the gate sees logged replies only
    r.close()
