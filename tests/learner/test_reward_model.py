"""The reward model: its metrics are right on known cases, and on the tiny model's frozen
features a head learns a synthetic signal it was never told the rule of."""
from __future__ import annotations

import random

import numpy as np
import pytest

from learner.reward_model import (
    SIGNALS,
    RewardModel,
    RewardModelConfig,
    auroc,
    brier,
    extract_features,
    fit,
    labels_from_components,
    reliability,
)


def test_auroc_brier_and_reliability_on_known_cases():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5   # ties count half
    assert auroc([0.3, 0.4], [1, 1]) is None                  # one class: undefined
    assert brier([1.0, 0.0], [1, 0]) == 0.0 and brier([0.5, 0.5], [1, 0]) == 0.25
    rows = reliability([0.05, 0.15, 0.95], [0, 0, 1], bins=2)
    assert [r["n"] for r in rows] == [2, 1] and rows[1]["observed"] == 1.0


def test_labels_come_from_the_components_that_fired_positively():
    got = labels_from_components({"thumbs": 1.0, "copy": 0.5, "dwell": -0.1}, 0.9)
    assert got == {"liked": 1, "thumbs_up": 1, "continuation": 0, "copy": 1, "long_dwell": 0}
    assert labels_from_components({"regenerate": -0.5}, -0.5)["liked"] == 0
    assert set(got) == set(SIGNALS)


def test_bad_config_is_refused_by_name():
    with pytest.raises(ValueError, match="holdout_share"):
        RewardModelConfig(holdout_share=1.5)
    with pytest.raises(ValueError, match="steps"):
        RewardModelConfig(steps=0)


@pytest.mark.integration
def test_a_head_on_the_tiny_model_learns_a_synthetic_signal(tiny, tmp_path):
    """Replies drawn from one half of a word list are 'liked', the other half not: the head
    must find that from the frozen features alone (held-out AUROC), and survive a save/load."""
    tok = tiny.tokenizer
    good = [tok.encode(w, add_special_tokens=False)[0] for w in (" yes", " great", " sure", " fine", " good")]
    bad = [tok.encode(w, add_special_tokens=False)[0] for w in (" no", " bad", " never", " awful", " wrong")]
    rng = random.Random(0)
    prompt = tok.encode("Question: how was it?", add_special_tokens=False)
    pairs, liked, ids = [], [], []
    for i in range(160):
        pos = i % 2 == 0
        reply = [rng.choice(good if pos else bad) for _ in range(rng.randint(3, 8))]
        pairs.append((prompt, reply))
        liked.append(int(pos))
        ids.append(f"rep_{i}")
    feats = extract_features(tiny.model, pairs, tiny.device)
    assert feats.shape == (160, 2 * tiny.model.config.hidden_size + 1)
    labels = {s: np.array(liked) if s == "liked" else np.zeros(160, dtype=int) for s in SIGNALS}
    model = fit(feats, labels, ids, RewardModelConfig(l2=1.0), base_model="tiny")
    assert model.metrics["liked"]["auroc"] >= 0.9, model.metrics["liked"]
    assert model.metrics["thumbs_up"]["auroc"] is None   # never observed: no claim
    model.save(tmp_path)
    again = RewardModel.load(tmp_path)
    assert np.allclose(again.predict(feats[:5]), model.predict(feats[:5]), atol=1e-5)
    r = again.reward(feats)
    assert r.min() >= -1 and r.max() <= 1


def test_rewardloop_evaluate_prints_the_reward_models_calibration(tmp_path):
    import os
    import subprocess
    import sys

    from tests.support.processes import REPO
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(80, 6))
    liked = (feats[:, 0] > 0).astype(int)                      # learnable from one feature
    labels = {s: liked if s == "liked" else np.zeros(80, dtype=int) for s in SIGNALS}
    fit(feats, labels, [f"r{i}" for i in range(80)], base_model="m").save(tmp_path)
    env = {**os.environ, "REWARDLOOP_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "service.cli", "evaluate", "--reward-model"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "AUROC" in out.stdout and "liked" in out.stdout and "reliability" in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.startswith("liked"))
    assert float(row.split()[2]) > 0.9                          # AUROC column
    missing = subprocess.run([sys.executable, "-m", "service.cli", "evaluate", "--reward-model"], cwd=REPO,
                             env={**os.environ, "REWARDLOOP_DATA_DIR": str(tmp_path / "none")},
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no reward model" in missing.stderr
