"""Drift detectors and the version comparison, on seeded synthetic streams (no Redis)."""

from __future__ import annotations

import json
import math
import random

import pytest

from worker.ops.compare import compare_versions
from worker.ops.drift import (
    DETECTORS,
    Cusum,
    CusumConfig,
    PageHinkley,
    PageHinkleyConfig,
    config_help,
    detector_from_dict,
    make_detector,
    run_stream,
)
from worker.ops.result import DriftResult


def thumbs(rng: random.Random, p_up: float, n: int) -> list[float]:
    """Thumbs-only rewards (+1 with probability p_up, else -1): the highest-variance case."""
    return [1.0 if rng.random() < p_up else -1.0 for _ in range(n)]


def step(seed: int, before: float, after: float, change_at: int, n: int) -> list[float]:
    """Thumbs stream whose P(up) steps from `before` to `after` at index change_at."""
    rng = random.Random(seed)
    return thumbs(rng, before, change_at) + thumbs(rng, after, n - change_at)


# ---------------------------------------------------------------- exact, hand-computed cases


def test_page_hinkley_hand_computed_drop():
    # mean after n=5..8: -0.2, -1/3, -3/7, -0.5; L = -0.8, -1.467, -2.038, -2.538
    detector = PageHinkley(PageHinkleyConfig(delta=0.0, threshold=2.5, min_samples=1))
    alarms = run_stream(detector, [0.0] * 4 + [-1.0] * 10)
    first = alarms[0]
    assert (first.index, first.direction, first.alarm) == (7, "drop", True)
    assert first.statistic == pytest.approx(0.8 + 2 / 3 + 4 / 7 + 0.5)
    assert first.evidence["change_index"] == 4
    assert first.evidence["mean_before"] == 0.0 and first.evidence["mean_after"] == -1.0


def test_cusum_hand_computed_rise():
    # warmup [1,-1,1,-1]: mean 0, std sqrt(4/3); z = 0.866, S+ grows 0.366/event, > 2 at the 6th
    detector = Cusum(CusumConfig(k=0.5, threshold=2.0, warmup=4))
    alarms = run_stream(detector, [1.0, -1.0, 1.0, -1.0] + [1.0] * 10)
    first = alarms[0]
    assert (first.index, first.direction) == (9, "rise")
    assert first.statistic == pytest.approx(6 * (math.sqrt(3 / 4) - 0.5))
    assert first.evidence["change_index"] == 4
    assert first.evidence["reference_std"] == pytest.approx(math.sqrt(4 / 3))


def test_no_alarm_before_min_samples_or_warmup():
    ph = PageHinkley(PageHinkleyConfig(delta=0.0, threshold=0.5, min_samples=20))
    assert [r.index for r in run_stream(ph, [0.0] + [-1.0] * 30)][0] == 19
    cusum = Cusum(CusumConfig(k=0.0, threshold=0.1, warmup=10))
    assert not run_stream(cusum, [0.0, 1.0] * 5)  # wild values, but all inside the warmup
    assert cusum.armed and cusum.statistic == 0.0  # armed from the next event on


# ---------------------------------------------------------------- seeded step changes


@pytest.mark.parametrize("name, expected_index", [("page_hinkley", 3427), ("cusum", 3419)])
def test_step_drop_detected_at_expected_index(name, expected_index):
    # P(up) 0.6 -> 0.5 is a 0.2 drop in mean reward at event 3000; calibrated delay ~400-900
    xs = step(seed=7, before=0.6, after=0.5, change_at=3000, n=6000)
    alarms = run_stream(make_detector(name), xs)
    assert alarms, "the drop was not detected"
    assert alarms[0].direction == "drop"
    assert 3000 < alarms[0].index < 3000 + 1500
    assert alarms[0].index == expected_index  # the exact seeded result, to catch regressions
    assert alarms[0].evidence["shift"] < -0.1


@pytest.mark.parametrize("name", sorted(DETECTORS))
@pytest.mark.parametrize("after, direction", [(0.45, "drop"), (0.75, "rise")])
def test_two_sided_direction(name, after, direction):
    xs = step(seed=11, before=0.6, after=after, change_at=2500, n=6000)
    alarms = run_stream(make_detector(name, version="v3"), xs)
    assert alarms and alarms[0].index >= 2500
    assert alarms[0].direction == direction
    assert alarms[0].version == "v3" and "v3" in alarms[0].message
    assert ("dropped" if direction == "drop" else "rose") in alarms[0].message


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_no_alarm_on_long_stable_stream(name):
    detector = make_detector(name)
    assert run_stream(detector, thumbs(random.Random(3), 0.6, 10_000)) == []
    assert detector.events_seen == 10_000
    assert detector.statistic < detector.threshold


def test_restarts_after_alarm_and_detects_the_next_change():
    rng = random.Random(5)
    xs = thumbs(rng, 0.6, 2000) + thumbs(rng, 0.4, 4000) + thumbs(rng, 0.6, 4000)
    alarms = run_stream(make_detector("cusum"), xs)
    assert [a.direction for a in alarms] == ["drop", "rise"]
    assert 2000 < alarms[0].index < 3500 and 6000 < alarms[1].index < 8000


# ---------------------------------------------------------------- persistence


@pytest.mark.parametrize("name", sorted(DETECTORS))
@pytest.mark.parametrize("split", [50, 500, 2600, 3300])  # warming up, armed, mid-change
def test_state_round_trip_continues_identically(name, split):
    xs = step(seed=21, before=0.6, after=0.4, change_at=2500, n=5000)
    original = make_detector(name, metric="reward", version="v9")
    head = run_stream(original, xs[:split])
    saved = json.loads(json.dumps(original.to_dict()))  # as it would travel through Redis
    restored = detector_from_dict(saved)
    assert type(restored) is type(original) and restored.to_dict() == original.to_dict()
    tail_original = run_stream(original, xs[split:])
    tail_restored = run_stream(restored, xs[split:])
    assert tail_original == tail_restored
    assert head + tail_original  # the change is detected on one side of the split
    assert restored.to_dict() == original.to_dict()


def test_from_dict_refuses_other_detector_and_format():
    state = make_detector("cusum").to_dict()
    with pytest.raises(ValueError, match="cusum"):
        PageHinkley.from_dict(state)
    with pytest.raises(ValueError, match="format"):
        Cusum.from_dict({**state, "format": 99})
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        detector_from_dict({**state, "detector": "nope"})


def test_reset_forgets_everything():
    detector = make_detector("page_hinkley")
    run_stream(detector, [0.5] * 200)
    detector.reset()
    assert detector.to_dict() == make_detector("page_hinkley").to_dict()


# ---------------------------------------------------------------- results and inputs


def test_result_is_json_serializable_and_frozen():
    result = run_stream(make_detector("cusum", version="v2"), step(1, 0.6, 0.3, 1500, 4000))[0]
    decoded = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert decoded["detector"] == "cusum" and decoded["alarm"] is True
    assert set(decoded["evidence"]) >= {"mean_before", "mean_after", "change_index"}
    with pytest.raises(AttributeError):
        result.alarm = False  # type: ignore[misc]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "abc", None])
def test_update_rejects_non_finite_values(bad):
    detector = make_detector("page_hinkley")
    with pytest.raises(ValueError, match="finite"):
        detector.update(bad)
    assert detector.events_seen == 0  # a refused value leaves no trace


# ---------------------------------------------------------------- compare_versions


def gauss(seed: int, mean: float, n: int, std: float = 0.8) -> list[float]:
    rng = random.Random(seed)
    return [max(-1.0, min(1.0, rng.gauss(mean, std))) for _ in range(n)]


def test_compare_versions_alarms_on_significant_drop():
    result = compare_versions(gauss(1, 0.2, 400), gauss(2, -0.1, 300), version="v5",
                              parent_version="v4")
    assert isinstance(result, DriftResult)
    assert result.alarm and result.direction == "drop" and result.index is None
    assert result.statistic > result.threshold
    ev = result.evidence
    assert ev["reason"] == "significant_drop" and ev["p_value"] < 1e-6
    assert ev["parent"]["n"] == 400 and ev["child"]["n"] == 300
    assert ev["parent"]["ci95"][0] < ev["parent"]["mean"] < ev["parent"]["ci95"][1]
    assert ev["diff_ci"][1] < 0 < ev["parent"]["mean"] - ev["child"]["mean"]
    assert "v5" in result.message and "v4" in result.message
    json.dumps(result.to_dict(), allow_nan=False)


def test_compare_versions_needs_min_samples_on_both_sides():
    result = compare_versions(gauss(1, 0.5, 400), [-1.0] * 49)
    assert not result.alarm and result.evidence["reason"] == "insufficient_samples"
    assert "49" in result.message and "50" in result.message
    assert compare_versions(gauss(1, 0.5, 400), [-1.0] * 50 + [-0.9]).alarm


def test_compare_versions_never_alarms_on_a_rise():
    result = compare_versions(gauss(1, 0.0, 500), gauss(2, 0.4, 500))
    assert not result.alarm and result.direction is None
    assert result.evidence["reason"] == "no_drop" and result.evidence["p_value"] > 0.99


def test_compare_versions_ignores_significant_but_tiny_drop():
    result = compare_versions(gauss(1, 0.2, 40_000), gauss(2, 0.17, 40_000), min_effect=0.05)
    assert result.evidence["p_value"] < 0.01
    assert not result.alarm and result.evidence["reason"] == "effect_too_small"


def test_compare_versions_not_significant_on_noise():
    # means 0.2 vs 0.1, std 0.8, n=60: z ~ 0.68, p ~ 0.25
    parent = [0.2 + 0.8 * (-1) ** i for i in range(60)]
    child = [0.1 + 0.8 * (-1) ** i for i in range(60)]
    result = compare_versions(parent, child)
    assert not result.alarm and result.evidence["reason"] == "not_significant"


def test_compare_versions_constant_inputs_stay_finite():
    result = compare_versions([0.5] * 60, [0.0] * 60)
    assert result.alarm and math.isfinite(result.statistic)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("factory, field_name, value", [
    (PageHinkleyConfig, "delta", -0.1),
    (PageHinkleyConfig, "threshold", 0),
    (PageHinkleyConfig, "min_samples", 0),
    (PageHinkleyConfig, "alpha", 1.5),
    (PageHinkleyConfig, "alpha", float("nan")),
    (PageHinkleyConfig, "threshold", True),
    (CusumConfig, "k", -1),
    (CusumConfig, "threshold", float("inf")),
    (CusumConfig, "warmup", 1),
    (CusumConfig, "warmup", 10.5),
    (CusumConfig, "min_std", 0.0),
])
def test_config_validation_names_field_and_value(factory, field_name, value):
    with pytest.raises(ValueError) as error:
        factory(**{field_name: value})
    assert f"{factory.__name__}.{field_name} must be" in str(error.value) and f"got {value!r}" in str(error.value)


@pytest.mark.parametrize("kwargs, field_name", [
    ({"min_samples": 1}, "min_samples"), ({"alpha": 0.5}, "alpha"), ({"alpha": 0}, "alpha"),
    ({"min_effect": -0.1}, "min_effect"),
])
def test_compare_versions_validates_parameters(kwargs, field_name):
    with pytest.raises(ValueError, match=f"compare_versions.{field_name}="):
        compare_versions([0.0] * 60, [0.0] * 60, **kwargs)


def test_compare_versions_rejects_non_finite_rewards():
    with pytest.raises(ValueError, match="child_rewards"):
        compare_versions([0.0] * 60, [0.0] * 59 + [float("nan")])


def test_registry_builds_known_detectors_and_names_mistakes():
    detector = make_detector("page_hinkley", threshold=20.0, metric="copy_rate")
    assert detector.config.threshold == 20.0 and detector.metric == "copy_rate"
    with pytest.raises(ValueError, match="known: cusum, page_hinkley"):
        make_detector("adwin")
    with pytest.raises(ValueError, match="unknown parameter.*lambda_"):
        make_detector("cusum", lambda_=3)
    with pytest.raises(TypeError, match="CusumConfig"):
        Cusum(PageHinkleyConfig())


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_config_field_has_help(name):
    helps = config_help(name)
    assert helps and all(len(text) > 20 for text in helps.values())
