"""Settings from a plain env dict: conversion, validation naming the variable, overrides, masking."""

import dataclasses
from pathlib import Path

import pytest

from core.settings import DEFAULT_MODEL, Settings, env_help


def test_defaults_from_empty_env():
    s = Settings.from_env({})
    assert s == Settings()
    assert s.model == DEFAULT_MODEL and s.port == 8000 and s.redis_url is None
    assert s.models_dir == Path("./var") / "models"


def test_types_are_converted():
    s = Settings.from_env({
        "REWARDLOOP_PORT": "9001",
        "REWARDLOOP_MAX_NEW_TOKENS": "64",
        "REWARDLOOP_CONTEXT_BUDGET": "512",
        "REWARDLOOP_TEMPERATURE": "0",
        "REWARDLOOP_TOP_P": "0.5",
        "REWARDLOOP_FEEDBACK_RATE": "3",
        "REWARDLOOP_DATA_DIR": "/tmp/rl-data",
        "REWARDLOOP_MODEL_CACHE": "/tmp/rl-models",
        "REWARDLOOP_REDIS_URL": "redis://h:1/0",
        "REWARDLOOP_PREFIX": "x:",
    })
    assert s.port == 9001 and isinstance(s.port, int)
    assert (s.max_new_tokens, s.context_budget) == (64, 512)
    assert s.temperature == 0.0 and isinstance(s.temperature, float)
    assert s.top_p == 0.5
    assert s.feedback_rate == 3.0 and isinstance(s.feedback_rate, float)
    assert s.data_dir == Path("/tmp/rl-data") and isinstance(s.data_dir, Path)
    assert s.model_cache_dir == Path("/tmp/rl-models") and s.models_dir == Path("/tmp/rl-models")
    assert s.redis_url == "redis://h:1/0" and s.prefix == "x:"


def test_empty_values_mean_default_except_system_prompt():
    s = Settings.from_env({"REWARDLOOP_PORT": "", "REWARDLOOP_SYSTEM_PROMPT": ""})
    assert s.port == 8000
    assert s.system_prompt == ""  # '' means no system message


@pytest.mark.parametrize("var, raw", [
    ("REWARDLOOP_PORT", "eighty"),
    ("REWARDLOOP_TOP_P", "high"),
    ("REWARDLOOP_MAX_NEW_TOKENS", "1.5"),
])
def test_bad_number_names_the_variable(var, raw):
    with pytest.raises(ValueError) as info:
        Settings.from_env({var: raw})
    assert var in str(info.value) and repr(raw) in str(info.value)


@pytest.mark.parametrize("kwargs, needle", [
    ({"top_p": 0.0}, "REWARDLOOP_TOP_P"),
    ({"top_p": 1.5}, "REWARDLOOP_TOP_P"),
    ({"temperature": -1.0}, "REWARDLOOP_TEMPERATURE"),
    ({"max_new_tokens": 0}, "REWARDLOOP_MAX_NEW_TOKENS"),
    ({"context_budget": 256, "max_new_tokens": 256}, "REWARDLOOP_CONTEXT_BUDGET"),
    ({"context_budget": 100, "max_new_tokens": 256}, "REWARDLOOP_CONTEXT_BUDGET"),
    ({"device": "tpu"}, "REWARDLOOP_DEVICE"),
    ({"candidate_share": 1.5}, "REWARDLOOP_CANDIDATE_SHARE"),
    ({"port": 0}, "REWARDLOOP_PORT"),
    ({"rerank_n": 0}, "REWARDLOOP_RERANK_N"),
    ({"rerank_n": 17}, "REWARDLOOP_RERANK_N"),
    ({"rerank_n": 4, "engine": "vllm", "vllm_urls": "http://gpu1:8100"}, "REWARDLOOP_ENGINE=local"),
])
def test_validation_names_field_and_variable(kwargs, needle):
    with pytest.raises(ValueError) as info:
        Settings(**kwargs)
    assert needle in str(info.value)
    bad = kwargs.get("device", kwargs.get("context_budget", next(iter(kwargs.values()))))
    assert str(bad) in str(info.value)


def test_validation_applies_to_env_too():
    with pytest.raises(ValueError, match="REWARDLOOP_DEVICE"):
        Settings.from_env({"REWARDLOOP_DEVICE": "gpu"})
    with pytest.raises(ValueError, match="must exceed max_new_tokens"):
        Settings.from_env({"REWARDLOOP_CONTEXT_BUDGET": "100"})


def test_nan_temperature_is_rejected():
    with pytest.raises(ValueError, match="REWARDLOOP_TEMPERATURE"):
        Settings.from_env({"REWARDLOOP_TEMPERATURE": "nan"})


def test_zero_feedback_rate_is_rejected_at_startup():
    with pytest.raises(ValueError, match="REWARDLOOP_FEEDBACK_RATE"):
        Settings.from_env({"REWARDLOOP_FEEDBACK_RATE": "0"})


@pytest.mark.parametrize("raw, want", [("0", False), ("1", True), ("false", False), ("ON", True)])
def test_anonymous_switch_reads_booleans(raw, want):
    assert Settings.from_env({"REWARDLOOP_ANONYMOUS": raw}).anonymous is want
    assert Settings.from_env({}).anonymous is True


def test_bad_anonymous_settings_name_the_variable():
    with pytest.raises(ValueError, match="REWARDLOOP_ANONYMOUS='maybe'"):
        Settings.from_env({"REWARDLOOP_ANONYMOUS": "maybe"})
    with pytest.raises(ValueError, match="REWARDLOOP_ANONYMOUS_PER_MINUTE"):
        Settings.from_env({"REWARDLOOP_ANONYMOUS_PER_MINUTE": "0"})
    with pytest.raises(ValueError, match="REWARDLOOP_ANONYMOUS"):
        Settings(anonymous="yes")


def test_overrides_win_over_env_and_none_does_not():
    env = {"REWARDLOOP_PORT": "9001", "REWARDLOOP_MODEL": "from-env", "REWARDLOOP_HOST": "0.0.0.0"}
    s = Settings.from_env(env, port=9100, model="tiny-random", host=None)
    assert (s.port, s.model) == (9100, "tiny-random")
    assert s.host == "0.0.0.0"  # a None override (flag not given) keeps the env value


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1


def test_describe_masks_secrets():
    s = Settings.from_env({"REWARDLOOP_SECRET": "hunter2", "REWARDLOOP_ADMIN_TOKEN": "adm1n"})
    rows = {name: (value, help_) for name, value, help_ in s.describe()}
    assert rows["secret"][0] == "***" and rows["admin_token"][0] == "***"
    assert "hunter2" not in repr(s.describe()) and "adm1n" not in repr(s.describe())
    assert rows["port"][0] == "8000"
    assert set(rows) == {f.name for f in dataclasses.fields(Settings)}
    assert all(help_.startswith("REWARDLOOP_") for _, help_ in rows.values())
    # unset secrets are shown as unset, not as a mask
    assert dict((n, v) for n, v, _ in Settings().describe())["secret"] == "None"


def test_env_help_lists_every_variable():
    text = env_help()
    for var in ("REWARDLOOP_REDIS_URL", "REWARDLOOP_MODEL_CACHE", "REWARDLOOP_TOP_P", "REWARDLOOP_SECRET"):
        assert var in text
