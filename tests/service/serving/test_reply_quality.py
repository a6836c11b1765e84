"""Relevance and fluency of each reply, scored by the server as the reply ends, on the engine
thread with the base weights (service/serving/quality.py EngineScores): a real server on the
tiny model serving a LoRA version. The stored scores are the base model's own (the adapter was
off while scoring), the adapter is back on for the next reply (its logged log-probs are the
adapter's, not the base's), and the reward ledger carries both components."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json

import pytest
import torch
from peft import PeftModel

from core.keys import Keys
from core.modeling import load_model
from core.quality import Calibration, load_or_calibrate, score_pairs
from core.sampling import SamplingParams, behavior_logprobs
from service.serving.quality import EngineScores, ReplySafety
from tests.support.clients import Chat, http
from tests.support.devtools import finalize_rewards
from tests.support.models import publish_adapter, save_random_adapter
from tests.support.waiting import wait_for

TINY_ID = "rewardloop/tiny-random-llama"


def _logged_vs(model, stored: dict) -> float:
    """Largest gap between a reply's logged behavior log-probs and `model`'s recomputation."""
    prompt, reply = json.loads(stored["prompt_ids"]), json.loads(stored["token_ids"])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + reply])).logits[0]
    params = SamplingParams(**json.loads(stored["params"]))
    again = behavior_logprobs(logits[len(prompt) - 1:-1], torch.tensor(reply), params)
    return float((again - torch.tensor(json.loads(stored["logprobs"]))).abs().max())


@pytest.mark.integration
def test_relevance_and_fluency_are_scored_on_the_engine_with_the_adapter_off_then_on(
        server_factory, models_dir, redis_url, rdb, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    srv = server_factory(REWARDLOOP_DATA_DIR=data, REWARDLOOP_REPLY_SAFETY=1, REWARDLOOP_REPLY_QUALITY=1,
                         REWARDLOOP_MAX_NEW_TOKENS=16)
    # ready only once calibrated: the calibration stalls the engine thread while it runs
    assert http("GET", srv.url + "/readyz")[1]["reply_quality"]["calibrated"] is True
    folder = save_random_adapter(models_dir, tmp_path / "adapter", seed=3)
    version = publish_adapter(redis_url, srv.prefix, data, folder, TINY_ID, mode="stable")
    chat = Chat(srv, srv.token("quinn"))
    wait_for(lambda: chat.ask("hi")["start"]["adapter_version"] == version, 60, what="serving the adapter",
             logs=[srv], every=0.5)
    rids = [chat.ask(q)["start"]["reply_id"] for q in ("What is the capital of France?", "And of Italy?")]
    keys = Keys(srv.prefix)
    # the scores follow the reply: the engine scores them after it ended, then completes the field
    wait_for(lambda: all("relevance" in json.loads(rdb.hget(keys.reply(rid), "quality")) for rid in rids), 30,
             what="the replies' relevance and fluency", logs=[srv])
    stored = [rdb.hgetall(keys.reply(rid)) for rid in rids]
    assert all(s["adapter_version"] == version for s in stored)

    base = load_model("tiny-random", models_dir, "cpu")
    adapted = PeftModel.from_pretrained(load_model("tiny-random", models_dir, "cpu").model, str(folder)).eval()
    cal = load_or_calibrate(base.model, base.tokenizer, base.device, base.model_id, models_dir)  # the server's cache
    for s in stored:
        quality = json.loads(s["quality"])
        pair = [(s["user_text"], s["text"])]
        want = cal.scores(score_pairs(base.model, base.tokenizer, pair, base.device)[0])
        with_adapter = cal.scores(score_pairs(adapted, base.tokenizer, pair, base.device)[0])
        assert "absent" not in quality, quality
        for name in ("relevance", "fluency"):
            assert quality[name] == pytest.approx(want[name], abs=2e-3), (name, quality, want)
        # the check can fail: the adapter's own figures are elsewhere
        assert abs(with_adapter["fluency"] - want["fluency"]) > 1e-2
        # the adapter served this reply (and the second one, after the first was scored)
        assert _logged_vs(adapted, s) < 1e-4 < _logged_vs(base.model, s)

    finalize_rewards(redis_url, srv.prefix)
    components = json.loads(rdb.hget(keys.reward(rids[0]), "components"))
    assert {"relevance", "fluency"} <= set(components), components
    status = http("GET", srv.url + "/readyz")[1]["reply_quality"]
    assert status["replies"] >= 3 and status["engine_ms_per_reply"] > 0


class _Engine:
    """Engine.call on the caller's thread; the model fails whatever it is asked."""
    model, device, streams = None, "cpu", 0

    def activate_adapter(self, name):
        pass

    def call(self, fn):
        fut = concurrent.futures.Future()
        try:
            fut.set_result(fn())
        except Exception as exc:
            fut.set_exception(exc)
        return fut


class _Safe:
    name = "stub"

    def unsafe_probability(self, texts, prompts=None):
        return [0.1] * len(texts)


def test_a_failed_calibration_or_scoring_costs_relevance_and_fluency_never_the_reply(tmp_path, caplog):
    scores = EngineScores(_Engine(), tokenizer=None, model_id="m", cache_dir=tmp_path)
    scores.start()                                       # no model to calibrate: it fails, and says so
    assert scores.settled and scores.calibration is None and "calibration failed" in scores.stats()["error"]
    safety = ReplySafety(_Safe(), scores)
    quality = asyncio.run(safety.quality("q", "a reply"))
    assert quality["unsafe"] == 0.1 and "calibration failed" in quality["absent"]

    async def saved_later(quality: dict) -> list:
        saved: list = []

        async def save(q):
            saved.append(q)
        safety.after_save("q", "a reply", quality, save)
        await asyncio.sleep(0.3)
        return saved

    scores.calibration = Calibration("m", 0.0, 1.0, -3.0, 1.0, 8)   # calibrated, but scoring fails
    quality = asyncio.run(safety.quality("q", "a reply"))
    assert quality["absent"].startswith("relevance and fluency: scored by the engine after")
    assert asyncio.run(saved_later(quality)) == []       # nothing stored: the reply keeps its safety score
    assert scores.failures == 1 and "keep their safety score only" in caplog.text
    assert "empty reply" in asyncio.run(safety.quality("q", "  "))["absent"]
