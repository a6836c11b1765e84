"""The behavior log-probs logged with each reply match a re-computation with the model."""
from __future__ import annotations

import json

import pytest
import torch

from core.keys import Keys
from core.modeling import load_model
from core.sampling import SamplingParams, behavior_logprobs
from tests.support.clients import Chat

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("temperature, top_p", [(0.7, 0.9), (1.3, 1.0)])
def test_logged_logprobs_match_recomputation(server_factory, rdb, models_dir, temperature, top_p):
    srv = server_factory(REWARDLOOP_TEMPERATURE=temperature, REWARDLOOP_TOP_P=top_p, REWARDLOOP_MAX_NEW_TOKENS=24)
    chat = Chat(srv, srv.token("lena"))
    chat.ask("first")
    reply_id = chat.ask("second, with history")["start"]["reply_id"]
    stored = rdb.hgetall(Keys(srv.prefix).reply(reply_id))
    prompt, reply = json.loads(stored["prompt_ids"]), json.loads(stored["token_ids"])
    params = SamplingParams(**json.loads(stored["params"]))
    assert (params.temperature, params.top_p) == (temperature, top_p)

    lm = load_model("tiny-random", models_dir, "cpu")
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([prompt + reply])).logits[0]  # [P+R, V]
    recomputed = behavior_logprobs(logits[len(prompt) - 1:-1], torch.tensor(reply), params)
    logged = torch.tensor(json.loads(stored["logprobs"]))
    assert recomputed.shape == logged.shape
    assert torch.allclose(recomputed, logged, atol=1e-4), (recomputed - logged).abs().max()
