"""The training loop on replies the tiny model really generated: the importance ratio starts
at 1, and one run moves log-probabilities the way the rewards ask and publishes version 1."""
from __future__ import annotations

import json

import pytest
import redis
import torch

from core.adapter_format import sha256_file
from core.registry import Registry
from core.sampling import SamplingParams
from learner.config import GateSettings, KtoSettings, PolicyGradientSettings, StepSettings, TrainConfig
from learner.dataset import Sample, _in_holdout
from learner.losses import LossWeights
from learner.runner import run_once
from learner.train import collate, reply_logits, reply_logprob_sums, sampling_logprobs
from tests.support.learner import NO_PROBE, as_policy, as_samples, favoured, make_logged, write_logged

pytestmark = pytest.mark.integration

# big steps so a 2-layer model moves visibly in a handful of steps
# (the policy-gradient mix: these tests look at its importance ratios; the default objective, KTO,
# is trained in test_one_run_moves_logprobs... too)
PG_MIX = LossWeights(pg=1.0, kl=0.05, sft=0.1, kto=0.0)
FAST = TrainConfig(safety=NO_PROBE, minibatch_size=6, gate=GateSettings(holdout_share=0.25, cf_margin=2.0, cf_min_ess=1.0),
                   min_samples=4,
                   losses=PG_MIX, step=StepSettings(mode="fixed", lr=5e-3, min_steps=9, max_epochs=3, kl_target=10.0))


@torch.no_grad()
def test_sampling_logprobs_reproduce_the_behavior_logprobs(tiny, logged):
    """Same temperature/top-p processing as at sampling: recomputed == recorded, batched and padded."""
    samples = as_samples(logged[:5])
    batch = collate(samples, tiny.tokenizer.pad_token_id, tiny.device)
    got = sampling_logprobs(reply_logits(tiny.model, batch), batch)  # [B,T]
    assert torch.allclose(got * batch.mask, batch.behavior, atol=1e-4)


@torch.no_grad()
def test_greedy_replies_have_no_ratio_and_stay_finite(tiny):
    greedy = make_logged(tiny, 2, n_tokens=4, params=SamplingParams(temperature=0.0, top_p=1.0), tag="g")
    assert all(lp == 0.0 for item in greedy for lp in item.logprobs)  # a point mass
    batch = collate(as_samples(greedy), tiny.tokenizer.pad_token_id, tiny.device)
    got = sampling_logprobs(reply_logits(tiny.model, batch), batch)
    assert torch.equal(got, torch.zeros_like(got))


@pytest.mark.parametrize("objective", ["pg_mix", "default"])
def test_one_run_moves_logprobs_toward_rewards_and_publishes_v1(settings, keys, tiny, logged, objective):
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    stream_ids = write_logged(r, keys, logged, lambda i: 1.0 if favoured(i) else -1.0)
    pad = tiny.tokenizer.pad_token_id
    before = reply_logprob_sums(tiny.model, as_samples(logged), pad, tiny.device)

    cfg = FAST if objective == "pg_mix" else TrainConfig(**{**FAST.to_dict(), "losses": LossWeights().__dict__})
    result = run_once(settings, cfg, progress=False)
    assert result.state == "published", result.reason
    assert result.version == 1
    first = result.stats["training"]["first"]
    if objective == "pg_mix":
        # the recorded behavior log-probs match the policy before the first step: ratio 1, no KL
        assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-3)
        assert abs(first["approx_kl"]) < 1e-4
    else:
        assert "kto" in first and "ratio_mean" not in first

    # the published folder is a standard PEFT adapter with a manifest that matches it
    reg = Registry(r, keys, settings.data_dir)
    folder = reg.version_dir(1)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["parent"] == "base" and manifest["state"] == "published"
    assert manifest["sha256"] == sha256_file(folder / "adapter_model.safetensors")
    assert manifest["config"]["step"]["lr"] == cfg.step.lr and manifest["samples_used"] == result.stats["samples_used"]
    assert manifest["base_model"] == "rewardloop/tiny-random-llama"

    from peft import PeftModel

    from core.modeling import load_model
    fresh = load_model("tiny-random", settings.models_dir, device="cpu")
    adapted = PeftModel.from_pretrained(fresh.model, str(folder)).eval()
    after = reply_logprob_sums(adapted, as_samples(logged), pad, tiny.device)

    trained = [not _in_holdout(i.reply_id, FAST.gate.holdout_share, FAST.seed) for i in logged]
    delta_good = [a - b for a, b, i, t in zip(after, before, logged, trained) if t and favoured(i)]
    delta_bad = [a - b for a, b, i, t in zip(after, before, logged, trained) if t and not favoured(i)]
    print(f"mean log-prob change: favoured {sum(delta_good) / len(delta_good):+.2f}, "
          f"punished {sum(delta_bad) / len(delta_bad):+.2f}")
    assert sum(delta_good) / len(delta_good) > 0.5, delta_good
    assert sum(delta_bad) / len(delta_bad) < -0.5, delta_bad

    state = reg.state()
    assert state["stable"] == "1" and state["versions"]["1"]["state"] == "published"
    assert state["versions"]["1"]["sha256"] == manifest["sha256"]
    assert r.get(keys.learn_cursor) == stream_ids[-1]
    assert [h["event"] for h in reg.history()] == ["publish"]
    r.close()


def test_kto_dpo_and_greedy_rows_train_without_nans(tiny, logged):
    """Every objective at once, greedy replies mixed in: finite losses, each term reported."""
    from core.modeling import load_model
    from learner.dataset import Dataset, Pair
    from learner.losses import LossWeights
    from learner.train import train, wrap_with_lora

    greedy = make_logged(tiny, 2, n_tokens=4, params=SamplingParams(temperature=0.0, top_p=1.0), tag="g")
    samples = as_samples(logged[:6] + greedy, lambda i: 1.0 if favoured(i) else -1.0)
    pairs = [Pair(chosen=a, rejected=b, source="choose")
             for a, b in zip(as_samples(logged[6:8]), as_samples(make_logged(tiny, 2, tag="p")))]
    # the pairs above answer different prompts; give each rejected reply its chosen one's prompt
    pairs = [Pair(p.chosen, Sample(**{**p.rejected.__dict__, "prompt_ids": p.chosen.prompt_ids}), p.source)
             for p in pairs]
    cfg = TrainConfig(minibatch_size=4, losses=LossWeights(pg=1.0, kl=0.1, sft=0.1, kto=0.5, dpo=0.5),
                      step=StepSettings(min_steps=1))
    fresh = load_model("tiny-random", tiny.path.parent, device="cpu")
    model = wrap_with_lora(fresh.model, cfg, None)
    data = Dataset(train=samples, holdout=[], pairs=pairs, last_id=None, last_pair_id=None)
    stats = train(as_policy(tiny, model), data, cfg, progress=False)
    assert stats["steps"] == 2 and stats["epochs"] == 1
    for key in ("pg", "kl", "sft", "kto", "dpo", "loss", "dpo_reward_accuracy", "kto_chosen_reward"):
        assert key in stats["last"] and torch.isfinite(torch.tensor(stats["last"][key])), key
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("choice, expected", [("batch", 0.75), ("zero", 0.0), ("running", 0.75)])
def test_the_pg_baseline_setting_picks_the_baseline(tiny, logged, choice, expected):
    """'zero' keeps every good reply's advantage positive even in a run of only good replies."""
    from core.modeling import load_model
    from learner.dataset import Dataset
    from learner.losses import LossWeights
    from learner.train import train, wrap_with_lora
    rewards = {item.reply_id: 1.0 if k % 2 else 0.5 for k, item in enumerate(logged[:4])}   # all good, mean 0.75
    samples = as_samples(logged[:4], lambda i: rewards[i.reply_id])
    cfg = TrainConfig(minibatch_size=4, pg=PolicyGradientSettings(baseline=choice),
                      step=StepSettings(lr=1e-4, min_steps=1),
                      losses=LossWeights(pg=1.0, kl=0.0, sft=0.0, kto=0.0))
    model = wrap_with_lora(load_model("tiny-random", tiny.path.parent, device="cpu").model, cfg, None)
    data = Dataset(train=samples, holdout=[], pairs=[], last_id=None, last_pair_id=None)
    stats = train(as_policy(tiny, model), data, cfg, progress=False)
    assert stats["baseline"] == pytest.approx(expected)
    assert stats["lineage_reward_mean"] == pytest.approx(0.75) and stats["lineage_reward_count"] == 4


def test_running_baseline_weighs_the_lineage_up_to_the_window():
    from learner.train import pg_baseline
    cfg = TrainConfig(pg=PolicyGradientSettings(baseline="running", baseline_window=4))
    # fresh adapter: the run's own mean
    assert pg_baseline(cfg, [1.0, 0.5], None) == (0.75, {"lineage_reward_mean": 0.75, "lineage_reward_count": 2})
    # parent saw 2 samples at mean -1: (-2 + 1.5) / 4
    base, rec = pg_baseline(cfg, [1.0, 0.5], (-1.0, 2))
    assert base == pytest.approx(-0.125) and rec["lineage_reward_count"] == 4
    # a long lineage weighs as baseline_window samples, not 1,000
    base, rec = pg_baseline(cfg, [1.0, 0.5], (-1.0, 1000))
    assert base == pytest.approx((-4 + 1.5) / 6) and rec["lineage_reward_count"] == 6
    assert pg_baseline(TrainConfig(pg=PolicyGradientSettings(baseline="zero")), [1.0], (-1.0, 9))[0] == 0.0
    assert pg_baseline(TrainConfig(pg=PolicyGradientSettings(baseline="batch")), [1.0, 0.0], (-1.0, 9))[0] == 0.5


def test_run_wide_advantage_scale(tiny, logged):
    """adv_scale 'run' divides by one RMS over the whole run: the same as per mini-batch when
    one mini-batch holds the run, and recorded in the stats."""
    from core.modeling import load_model
    from learner.dataset import Dataset
    from learner.losses import LossWeights
    from learner.train import train, wrap_with_lora
    rewards = {item.reply_id: 1.0 if k % 2 else 0.5 for k, item in enumerate(logged[:4])}
    samples = as_samples(logged[:4], lambda i: rewards[i.reply_id])
    data = Dataset(train=samples, holdout=[], pairs=[], last_id=None, last_pair_id=None)

    def first_pg(scale, mb):
        cfg = TrainConfig(minibatch_size=mb, pg=PolicyGradientSettings(baseline="zero", adv_scale=scale),
                          step=StepSettings(lr=1e-4, min_steps=1),
                          losses=LossWeights(pg=1.0, kl=0.0, sft=0.0, kto=0.0))
        model = wrap_with_lora(load_model("tiny-random", tiny.path.parent, device="cpu").model, cfg, None)
        stats = train(as_policy(tiny, model), data, cfg, progress=False)
        assert stats["run_adv_rms"] == pytest.approx(((1.0 + 0.25) / 2) ** 0.5)
        assert stats["loop_seconds"] == pytest.approx(stats["seconds_per_step"] * stats["steps"]) and stats["steps"]
        return stats["first"]["pg"]
    assert first_pg("run", 4) == pytest.approx(first_pg("minibatch", 4), abs=1e-6)


def test_kto_labels_relative_to_the_baseline_and_balanced_classes():
    from learner.train import kto_labelling
    rewards = [-0.9, -0.8, -0.7, -0.6, 0.2]      # a mostly displeased population
    trl = TrainConfig(kto=KtoSettings(labels="sign", balance=False))
    assert kto_labelling(trl, rewards, -0.65) == (0.0, (1.0, 1.0))               # TRL's labels, unweighted
    cut, (wd, wu) = kto_labelling(TrainConfig(), rewards, -0.65)                   # the defaults
    assert cut == -0.65                                                           # -0.6 and 0.2 are desirable
    assert wd * 2 == pytest.approx(wu * 3) and wd * 2 + wu * 3 == pytest.approx(len(rewards))  # half each
    assert kto_labelling(TrainConfig(kto=KtoSettings(labels="sign")), [0.5, 0.6], 0.55)[1] == (1.0, 1.0)  # one class: no weights
    with pytest.raises(ValueError, match="KtoSettings.labels"):
        TrainConfig(kto=KtoSettings(labels="median"))
