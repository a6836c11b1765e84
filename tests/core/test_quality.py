"""Relevance and fluency from the base model's log-probs (core/quality.py): batching changes no
number, empty replies are not scored, calibration is cached; on the default model each score
orders labelled pairs (bench/data/quality_pairs.json, the set bench/quality.py reports on)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from core import quality
from tests.support.processes import REPO

PAIRS = [("What is the capital of France?", "The capital of France is Paris."),
         ("What is the capital of France?", "Bananas are a good source of potassium."),
         ("How do I boil an egg?", "Put the egg in boiling water for nine minutes."),
         ("Say hi", "")]


@pytest.fixture(scope="module")
def tiny(models_dir):
    from core.modeling import load_model
    torch.set_num_threads(1)
    return load_model("tiny-random", models_dir, device="cpu")


def test_batched_scores_equal_one_at_a_time_and_empty_replies_are_none(tiny):
    together = quality.score_pairs(tiny.model, tiny.tokenizer, PAIRS, tiny.device)
    alone = [quality.score_pairs(tiny.model, tiny.tokenizer, [p], tiny.device)[0] for p in PAIRS]
    assert together[3] is None and alone[3] is None
    for a, b in zip(together[:3], alone[:3]):
        assert a.n_tokens == b.n_tokens > 0
        assert a.pmi == pytest.approx(b.pmi, abs=1e-4) and a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_token_logprobs_match_a_plain_forward(tiny):
    ctx, reply = [1, 2, 3, 4], [5, 6, 7]
    got = quality.token_logprobs(tiny.model, [(ctx, reply), ([1, 2, 9], [8])], tiny.device)[0]
    with torch.no_grad():
        logp = torch.log_softmax(tiny.model(input_ids=torch.tensor([ctx + reply])).logits[0].float(), -1)
    want = [float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(reply)]
    assert got == pytest.approx(want, abs=1e-4)


def test_calibration_is_computed_once_and_normalises_to_z_scores(tiny, tmp_path):
    cal = quality.load_or_calibrate(tiny.model, tiny.tokenizer, tiny.device, "tiny", tmp_path)
    path = quality.calibration_path(tmp_path, "tiny")
    assert path.exists() and cal.n >= 4 and cal.pmi_std > 0 and cal.logprob_std > 0
    path.write_text(json.dumps({**json.loads(path.read_text()), "pmi_mean": 123.0}))
    assert quality.load_or_calibrate(None, None, None, "tiny", tmp_path).pmi_mean == 123.0   # read, not recomputed
    raw = quality.BaseScores(pmi=cal.pmi_mean + cal.pmi_std, logprob=cal.logprob_mean, n_tokens=5)
    scores = cal.scores(raw)
    assert scores["fluency"] == pytest.approx(0.0) and math.isfinite(scores["relevance"])


@pytest.mark.slow
def test_an_unwritable_cache_still_gives_the_calibration(tiny, tmp_path, caplog):
    blocked = tmp_path / "models"
    blocked.write_text("a file where the models folder should be")   # mkdir under it fails like a read-only disk
    cal = quality.load_or_calibrate(tiny.model, tiny.tokenizer, tiny.device, "tiny", blocked)
    assert cal.n >= 4 and cal.pmi_std > 0 and "not cached" in caplog.text


def test_on_the_default_model_each_score_orders_labelled_pairs(models_dir):
    from core.modeling import load_model
    lm = load_model("smollm2", models_dir, device="cpu")
    pairs = json.loads((REPO / "bench" / "data" / "quality_pairs.json").read_text())["pairs"]
    for comp, key in (("relevance", "pmi"), ("fluency", "logprob")):
        rows = [p for p in pairs if p["component"] == comp][:8]
        s = quality.score_pairs(lm.model, lm.tokenizer, [(p["prompt"], p[side]) for p in rows for side in ("good", "bad")],
                                lm.device)
        right = sum(getattr(s[2 * i], key) > getattr(s[2 * i + 1], key) for i in range(len(rows)))
        assert right >= 7, (comp, right)   # the full set: bench/quality.py (100 % on each)
