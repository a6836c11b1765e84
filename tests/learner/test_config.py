"""Learner config: defaults, validation messages that name the field, overrides."""
from __future__ import annotations

import dataclasses

import pytest

from learner.config import ALL_LINEAR, KtoSettings, TrainConfig, from_dict, load_train_config


def test_defaults_and_every_field_has_help():
    cfg = TrainConfig()
    assert cfg.lora.rank == 16 and cfg.lora.alpha == 32 and cfg.lora.target_modules == ALL_LINEAR
    assert cfg.sft.threshold == 0.5 and cfg.losses.kto == 1.0 and cfg.losses.pg == 0.0
    assert cfg.kto.labels == "baseline" and cfg.kto.balance       # the learning bench's choice
    assert cfg.step.kl_target == 0.3 and cfg.kl_budget == pytest.approx(0.45) and cfg.step.mode == "kl_target"
    groups = [type(getattr(cfg, f.name)) for f in dataclasses.fields(TrainConfig) if dataclasses.is_dataclass(getattr(cfg, f.name))]
    assert len(groups) >= 11      # losses, lora, step (trust region), pg, kto, dpo, sft, gate, onpolicy, replay, reward_model
    for cls in (TrainConfig, *groups):
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
    ({"gate": {"holdout_share": 0.95}}, "GateSettings.holdout_share"),
    ({"lora": {"rank": 0}}, "LoraSettings.rank"), ({"lora": {"dropout": 1.0}}, "LoraSettings.dropout"),
    ({"losses": {"kl": -0.1}}, "LossWeights.kl"), ({"sft": {"threshold": 2}}, "SftSettings.threshold"),
    ({"pg": {"baseline": "median"}}, "PolicyGradientSettings.baseline"),
    ({"pg": {"baseline_window": 2.5}}, "PolicyGradientSettings.baseline_window"),
    ({"pg": {"adv_scale": "batch"}}, "PolicyGradientSettings.adv_scale"),
    ({"pg": {"reduce": "sum"}}, "PolicyGradientSettings.reduce"),
    ({"pg": {"baseline_window": -1}}, "PolicyGradientSettings.baseline_window"),
    ({"pg": {"ratio_cap": 0.5}}, "PolicyGradientSettings.ratio_cap"),
    ({"kto": {"labels": "median"}}, "KtoSettings.labels"), ({"reward_model": {"enabled": 1}}, "RewardModelSettings.enabled"),
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


def test_an_old_flat_config_still_loads_with_a_warning_naming_the_new_keys(tmp_path):
    """Adapter manifests and TOML files written before the groups hold flat keys (kto_beta, ...)."""
    old = {k: v for k, v in TrainConfig().to_dict().items()         # as an older manifest's config has them
           if k not in ("pg", "kto", "gate", "onpolicy", "replay", "reward_model")}
    old.update(kto_beta=0.3, pg_baseline="running", cf_min_ess=5.0, reward_model=False, onpolicy_n=2, replay_window=0)
    with pytest.warns(FutureWarning, match=r"kto_beta -> kto\.beta.*pg_baseline -> pg\.baseline"):
        cfg = from_dict(old)
    assert (cfg.kto.beta, cfg.pg.baseline, cfg.gate.cf_min_ess, cfg.reward_model.enabled) == (0.3, "running", 5.0, False)
    assert (cfg.onpolicy.n, cfg.replay.window, cfg.kto.labels, cfg.gate.cf_margin) == (2, 0, "baseline", 0.1)
    path = tmp_path / "train.toml"
    path.write_text('[kto]\nbeta = 0.2\n[gate]\ncf_margin = 0.3\n')
    cfg = load_train_config(path, ["pg.baseline=zero", "reward_model.enabled=false"])
    assert (cfg.kto.beta, cfg.gate.cf_margin, cfg.pg.baseline, cfg.reward_model.enabled) == (0.2, 0.3, "zero", False)
    with pytest.warns(FutureWarning, match=r"kto_labels -> kto\.labels"):
        assert load_train_config(path, ["kto_labels=sign"]).kto == KtoSettings(beta=0.2, labels="sign")
