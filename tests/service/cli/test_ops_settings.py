"""Settings of the ops monitor: defaults, environment names, validation naming the variable."""
from __future__ import annotations

import pytest

from core.settings import Settings
from worker.beat_schedule import build_schedule
from worker.ops.sequential import SequentialConfig


def test_defaults_and_environment():
    s = Settings()
    assert (s.ops_every_s, s.drift_policy, s.drift_min_samples, s.drift_alpha) == (15.0, "rollback", 8, 0.05)
    assert (s.drift_max_samples, s.drift_min_effect, s.canary_share) == (40, 0.3, 0.5)
    from worker.ops.monitor import sequential_config
    assert sequential_config(s) == SequentialConfig()   # the shipped settings are the simulated test
    s = Settings.from_env({"REWARDLOOP_DRIFT_POLICY": "alert", "REWARDLOOP_OPS_EVERY_S": "2.5",
                           "REWARDLOOP_DRIFT_MIN_EFFECT": "0.1"})
    assert (s.drift_policy, s.ops_every_s, s.drift_min_effect) == ("alert", 2.5, 0.1)
    entry = build_schedule(s)["ops-monitor"]
    assert entry["task"] == "worker.tasks.ops_tick" and entry["schedule"].total_seconds() == 2.5


@pytest.mark.parametrize("env, needle", [
    ({"REWARDLOOP_DRIFT_POLICY": "panic"}, "REWARDLOOP_DRIFT_POLICY"),
    ({"REWARDLOOP_DRIFT_ALPHA": "0.7"}, "REWARDLOOP_DRIFT_ALPHA"),
    ({"REWARDLOOP_DRIFT_MIN_SAMPLES": "1"}, "REWARDLOOP_DRIFT_MIN_SAMPLES"),
    ({"REWARDLOOP_DRIFT_MIN_EFFECT": "-0.1"}, "REWARDLOOP_DRIFT_MIN_EFFECT"),
    ({"REWARDLOOP_DRIFT_MAX_SAMPLES": "4"}, "REWARDLOOP_DRIFT_MAX_SAMPLES"),
    ({"REWARDLOOP_OPS_EVERY_S": "0"}, "REWARDLOOP_OPS_EVERY_S"),
    ({"REWARDLOOP_OPS_MINUTE_RETENTION_S": "7200", "REWARDLOOP_OPS_HOUR_RETENTION_S": "3600"},
     "REWARDLOOP_OPS_HOUR_RETENTION_S"),
])
def test_bad_values_name_the_variable(env, needle):
    with pytest.raises(ValueError, match=needle):
        Settings.from_env(env)
