"""RewardConfig: defaults, TOML loading, validation messages, and the config hash."""

import dataclasses
import json
import re

import pytest

from worker.rewards.config import (
    RewardConfig,
    RewardConfigError,
    config_dict,
    config_from_mapping,
    config_hash,
    default_config_text,
    load_reward_config,
)

FIELDS = [f.name for f in dataclasses.fields(RewardConfig)]


def test_packaged_default_toml_equals_dataclass_defaults():
    assert load_reward_config(None) == RewardConfig()


def test_documented_defaults():
    cfg = RewardConfig()
    assert (cfg.thumbs_weight, cfg.rating_weight, cfg.choose_weight) == (1.0, 1.0, 1.0)
    assert (cfg.copy_weight, cfg.regenerate_weight, cfg.continuation_weight) == (0.5, 0.5, 0.3)
    assert (cfg.dwell_weight, cfg.abandon_weight) == (0.1, 0.1)
    assert (cfg.wait_window_s, cfg.continuation_window_s, cfg.reading_wpm) == (600.0, 600.0, 230.0)
    assert (cfg.no_signal_policy, cfg.default_reward, cfg.max_user_share) == ("exclude", 0.0, 0.25)
    assert (cfg.anomaly_min_events, cfg.anomaly_fast_s, cfg.anomaly_weight) == (5, 1.0, 0.25)


def test_every_field_has_help():
    for f in dataclasses.fields(RewardConfig):
        assert f.metadata.get("help", "").strip(), f"{f.name} has no help text"


def test_default_toml_documents_every_key_with_a_comment_line():
    lines = default_config_text().splitlines()
    keys = {}
    for i, line in enumerate(lines):
        m = re.match(r"^(\w+)\s*=", line)
        if m:
            keys[m.group(1)] = i
            assert lines[i - 1].startswith("#"), f"no comment line above {m.group(1)}"
    assert sorted(keys) == sorted(FIELDS)


def test_toml_override_of_one_key_keeps_the_other_defaults(tmp_path):
    path = tmp_path / "reward.toml"
    path.write_text("copy_weight = 0.2\n")
    cfg = load_reward_config(str(path))
    assert cfg.copy_weight == 0.2
    assert cfg == dataclasses.replace(RewardConfig(), copy_weight=0.2)


def test_toml_integers_become_floats_and_lists_become_tuples(tmp_path):
    path = tmp_path / "reward.toml"
    path.write_text('wait_window_s = 300\nsafety_words = ["Darn", "  Blow Up "]\n')
    cfg = load_reward_config(path)
    assert cfg.wait_window_s == 300.0 and isinstance(cfg.wait_window_s, float)
    assert cfg.safety_words == ("darn", "blow up")
    hash(cfg)  # frozen and made of immutable values: usable as a cache key


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path):
    path = tmp_path / "reward.toml"
    path.write_text("thumbs_weigth = 0.5\n")
    with pytest.raises(RewardConfigError, match=r"unknown reward config key 'thumbs_weigth'.*'thumbs_weight'"):
        load_reward_config(path)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("thumbs_weight = = 1\n")
    with pytest.raises(RewardConfigError, match="broken.toml is not valid TOML"):
        load_reward_config(path)


def test_invalid_value_in_toml_names_the_field(tmp_path):
    path = tmp_path / "reward.toml"
    path.write_text('no_signal_policy = "drop"\n')
    with pytest.raises(RewardConfigError, match=r"RewardConfig\.no_signal_policy .*'drop'"):
        load_reward_config(path)


@pytest.mark.parametrize(
    "name, value",
    [
        ("thumbs_weight", -1.0),  # a negative weight would flip a component's meaning
        ("safety_weight", -0.5),
        ("thumbs_weight", "high"),
        ("thumbs_weight", True),
        ("dwell_weight", float("nan")),
        ("reading_wpm", 0.0),
        ("wait_window_s", -5.0),
        ("continuation_window_s", 0.0),
        ("repetition_n", 0),
        ("repetition_n", 2.5),
        ("repetition_threshold", 1.0),
        ("repetition_threshold", -0.1),
        ("safety_words", "badword"),
        ("safety_words", ["ok", ""]),
        ("no_signal_policy", "drop"),
        ("default_reward", 2.0),
        ("max_user_share", 0.0),
        ("max_user_share", 1.5),
        ("anomaly_min_events", 1),
        ("anomaly_fast_s", -1.0),
        ("anomaly_weight", 1.5),
    ],
)
def test_validation_names_the_field_and_the_bad_value(name, value):
    with pytest.raises(RewardConfigError) as err:
        RewardConfig(**{name: value})
    message = str(err.value)
    assert f"RewardConfig.{name}" in message
    assert repr(value) in message


def test_boundary_values_are_accepted():
    cfg = RewardConfig(
        thumbs_weight=0.0, max_user_share=1.0, default_reward=-1.0, anomaly_weight=0.0, repetition_threshold=0.0
    )
    assert (cfg.thumbs_weight, cfg.max_user_share, cfg.default_reward) == (0.0, 1.0, -1.0)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RewardConfig().thumbs_weight = 2.0


def test_config_hash_is_16_hex_and_stable():
    a, b = RewardConfig(), load_reward_config(None)
    assert re.fullmatch(r"[0-9a-f]{16}", config_hash(a))
    assert config_hash(a) == config_hash(b)
    # key order and word case in the source do not matter: the hash is of the resolved config
    one = config_from_mapping({"copy_weight": 0.2, "safety_words": ["Darn"]})
    two = config_from_mapping({"safety_words": ["darn"], "copy_weight": 0.2})
    assert config_hash(one) == config_hash(two)


def test_config_hash_changes_when_a_weight_changes():
    base = config_hash(RewardConfig())
    assert config_hash(RewardConfig(thumbs_weight=0.9)) != base
    assert config_hash(RewardConfig(dwell_weight=0.2)) != base
    assert config_hash(RewardConfig(safety_words=("darn",))) != base


def test_config_dict_is_json_and_round_trips():
    cfg = RewardConfig(safety_words=("darn",), copy_weight=0.2)
    data = json.loads(json.dumps(config_dict(cfg)))
    assert data["safety_words"] == ["darn"]
    assert config_from_mapping(data) == cfg
