"""Learner config: defaults, validation messages that name the field, overrides."""
from __future__ import annotations

import dataclasses

import pytest

from learner.config import ALL_LINEAR, LoraSettings, StepSettings, TrainConfig, load_train_config


def test_defaults_and_every_field_has_help():
    cfg = TrainConfig()
    assert cfg.lora.rank == 16 and cfg.lora.alpha == 32 and cfg.lora.target_modules == ALL_LINEAR
    assert cfg.sft_threshold == 0.5 and cfg.losses.kto == 1.0 and cfg.losses.pg == 0.0
    assert cfg.kto_labels == "baseline" and cfg.kto_balance       # the learning bench's choice
    assert cfg.step.kl_target == 0.3 and cfg.kl_budget == pytest.approx(0.45) and cfg.step.mode == "kl_target"
    for cls in (TrainConfig, LoraSettings, StepSettings):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    d = cfg.to_dict()
    assert d["lora"]["target_modules"] == list(ALL_LINEAR) and d["losses"]["kto"] == 1.0
    assert TrainConfig(**d) == cfg                                   # the manifest's config round-trips


@pytest.mark.parametrize("kwargs, field", [
    ({"step": {"lr": 0}}, "StepSettings.lr"), ({"step": {"min_steps": 1.5}}, "StepSettings.min_steps"),
    ({"step": {"kl_target": float("nan")}}, "StepSettings.kl_target"),
    ({"step": {"kl_target": -1}}, "StepSettings.kl_target"), ({"step": {"kl_target": True}}, "StepSettings.kl_target"),
    ({"step": {"max_scale": 0.5}}, "StepSettings.max_scale"), ({"step": {"max_scale": float("inf")}}, "StepSettings.max_scale"),
    ({"step": {"max_epochs": 0}}, "StepSettings.max_epochs"), ({"step": {"mode": "adam"}}, "StepSettings.mode"),
    ({"holdout_share": 0.95}, "TrainConfig.holdout_share"),
    ({"lora": {"rank": 0}}, "LoraSettings.rank"), ({"lora": {"dropout": 1.0}}, "LoraSettings.dropout"),
    ({"losses": {"kl": -0.1}}, "LossWeights.kl"), ({"sft_threshold": 2}, "TrainConfig.sft_threshold"),
    ({"pg_baseline": "median"}, "TrainConfig.pg_baseline"),
    ({"baseline_window": 2.5}, "TrainConfig.baseline_window"),
    ({"adv_scale": "batch"}, "TrainConfig.adv_scale"),
    ({"pg_reduce": "sum"}, "TrainConfig.pg_reduce"),
    ({"baseline_window": -1}, "TrainConfig.baseline_window"),
])
def test_bad_values_name_the_field_and_value(kwargs, field):
    with pytest.raises((ValueError, TypeError)) as err:
        TrainConfig(**kwargs)
    assert field in str(err.value)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('[step]\nlr = 0.001\nkl_target = 0.2\n[losses]\nkl = 0.2\n[lora]\nrank = 4\n')
    cfg = load_train_config(path, ["step.kl_target=0.1", "losses.sft=0", "lora.target_modules=[\"q_proj\"]"])
    assert (cfg.step.lr, cfg.step.kl_target, cfg.losses.kl, cfg.losses.sft, cfg.lora.rank) == (0.001, 0.1, 0.2, 0.0, 4)
    assert cfg.lora.target_modules == ("q_proj",) and cfg.kl_budget == pytest.approx(0.15)
    with pytest.raises(ValueError, match="unknown learner setting"):
        load_train_config(None, ["learning_rate=1"])
    with pytest.raises(ValueError, match=r"moved: lr -> step.lr"):     # an old TOML says where it went
        load_train_config(None, ["lr=0.001"])


@pytest.mark.parametrize("scale", [5.0, 0.05])  # peaked (top-k path) and flat (full-sort fallback)
def test_nucleus_keep_matches_the_sampler(scale):
    import torch

    from core.sampling import SamplingParams, processed_logprobs
    from learner.train import nucleus_keep
    logp = torch.log_softmax(torch.randn(16, 2000, generator=torch.Generator().manual_seed(0)) * scale, -1)
    expected = torch.isfinite(processed_logprobs(logp, SamplingParams(temperature=1.0, top_p=0.9)))
    assert torch.equal(nucleus_keep(logp, 0.9, k=64), expected)


@pytest.mark.parametrize("kwargs, needle", [
    ({"learner_machine": "gpu"}, "REWARDLOOP_LEARNER_MACHINE"),
    ({"learner_nice": 20}, "REWARDLOOP_LEARNER_NICE"), ({"learner_nice": -1}, "REWARDLOOP_LEARNER_NICE"),
    ({"learner_nice": 2.5}, "REWARDLOOP_LEARNER_NICE"),
    ({"learner_yield_max_s": -1.0}, "REWARDLOOP_LEARNER_YIELD_MAX_S"),
    ({"learner_yield_max_s": float("nan")}, "REWARDLOOP_LEARNER_YIELD_MAX_S"),
    ({"learner_yield_max_s": float("inf")}, "REWARDLOOP_LEARNER_YIELD_MAX_S"),
])
def test_chat_first_settings_are_validated(kwargs, needle):
    from core.settings import LearnerSettings
    with pytest.raises(ValueError, match=needle):
        LearnerSettings(**kwargs)
    assert LearnerSettings().learner_machine == "auto"
