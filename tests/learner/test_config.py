"""Learner config: defaults, validation messages that name the field, overrides."""
from __future__ import annotations

import dataclasses

import pytest

from learner.config import ALL_LINEAR, LoraSettings, TrainConfig, load_train_config


def test_defaults_and_every_field_has_help():
    cfg = TrainConfig()
    assert cfg.lora.rank == 16 and cfg.lora.alpha == 32 and cfg.lora.target_modules == ALL_LINEAR
    assert cfg.sft_threshold == 0.5 and cfg.losses.kto == 1.0 and cfg.losses.pg == 0.0
    assert cfg.kto_labels == "baseline" and cfg.kto_balance       # the learning bench's choice
    for cls in (TrainConfig, LoraSettings):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    d = cfg.to_dict()
    assert d["lora"]["target_modules"] == list(ALL_LINEAR) and d["losses"]["kto"] == 1.0


@pytest.mark.parametrize("kwargs, field", [
    ({"lr": 0}, "TrainConfig.lr"), ({"epochs": 1.5}, "TrainConfig.epochs"),
    ({"holdout_share": 0.95}, "TrainConfig.holdout_share"), ({"kl_budget": -1}, "TrainConfig.kl_budget"),
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
    path.write_text('lr = 0.001\nepochs = 2\n[losses]\nkl = 0.2\n[lora]\nrank = 4\n')
    cfg = load_train_config(path, ["epochs=3", "losses.sft=0", "lora.target_modules=[\"q_proj\"]"])
    assert (cfg.lr, cfg.epochs, cfg.losses.kl, cfg.losses.sft, cfg.lora.rank) == (0.001, 3, 0.2, 0.0, 4)
    assert cfg.lora.target_modules == ("q_proj",)
    with pytest.raises(ValueError, match="unknown learner setting"):
        load_train_config(None, ["learning_rate=1"])


@pytest.mark.parametrize("scale", [5.0, 0.05])  # peaked (top-k path) and flat (full-sort fallback)
def test_nucleus_keep_matches_the_sampler(scale):
    import torch

    from core.sampling import SamplingParams, processed_logprobs
    from learner.train import nucleus_keep
    logp = torch.log_softmax(torch.randn(16, 2000, generator=torch.Generator().manual_seed(0)) * scale, -1)
    expected = torch.isfinite(processed_logprobs(logp, SamplingParams(temperature=1.0, top_p=0.9)))
    assert torch.equal(nucleus_keep(logp, 0.9, k=64), expected)
