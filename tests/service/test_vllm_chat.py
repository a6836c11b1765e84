"""The chat flows that matter, over the `vllm` engine: a rewardloop server with
REWARDLOOP_ENGINE=vllm in front of a real vLLM server (CPU build, bf16) on the tiny model.

The websocket and OpenAI tests imported below are the built-in engine's own tests (they run
against it in their modules): here the same functions run against vLLM, through this module's
`server` fixture. The tests written here cover what is vLLM's own: the behavior log-probs
(against the learner's fp32 recomputation), greedy 0.0, `stop` aborting the vLLM request, and
what a server reports."""
from __future__ import annotations

import json
import time

import openai
import pytest
import torch

from tests.conftest import _factory
from tests.helpers import ADMIN, Chat, http
from tests.service.test_feedback import (  # noqa: F401 (collected here: run over vLLM)
    test_choose_between_two_candidates_moves_the_history,
    test_regenerate_streams_a_linked_reply_that_replaces_the_old_one,
)
from tests.service.test_openai_api import (  # noqa: F401
    test_non_streaming_completion,
    test_official_client_streams_a_completion_that_is_logged,
    test_the_same_seed_gives_the_same_reply,
)
from tests.service.test_openai_fields import (  # noqa: F401
    test_n2_streams_both_candidates,
    test_returned_logprobs_are_the_stored_behavior_logprobs,
    test_stop_ends_the_text_before_the_stop_string_and_the_log_is_what_was_sent,
)
from tests.service.test_ws_chat import (  # noqa: F401
    test_multi_turn_history_is_in_the_prompt,
    test_streamed_tokens_equal_the_logged_reply,
)
from tests.service.vllm_support import start_vllm, vllm_running

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vllm(models_dir, tmp_path_factory):
    procs = start_vllm(models_dir, tmp_path_factory.mktemp("vllm"))
    yield procs[0]
    for p in procs:
        p.stop()


@pytest.fixture(scope="module")
def server(vllm, models_dir, redis_url, tmp_path_factory):
    """The rewardloop server of this module: REWARDLOOP_ENGINE=vllm."""
    start, started = _factory(redis_url, tmp_path_factory.mktemp("server"))
    yield start(REWARDLOOP_ENGINE="vllm", REWARDLOOP_VLLM_URLS=vllm.url, REWARDLOOP_MAX_NEW_TOKENS=400,
                REWARDLOOP_CONTEXT_BUDGET=2048)
    for proc in started:
        proc.stop()


def record(rdb, server, reply_id) -> dict:
    h = rdb.hgetall(f"{server.prefix}reply:{reply_id}")
    assert h, reply_id
    return h


def test_status_names_the_vllm_server(server, vllm):
    code, body = http("GET", server.url + "/admin/adapters", token=ADMIN)
    assert code == 200, body
    st = body["server"]
    assert st["engine"] == "vllm"
    [srv] = st["servers"]
    assert srv["url"] == vllm.url and srv["up"] and srv["base"] == "rewardloop/tiny-random-llama"
    assert http("GET", server.url + "/readyz")[0] == 200


def test_logged_logprobs_are_vllms_and_close_to_the_learners_fp32_recomputation(server, rdb, models_dir):
    """The learner recomputes every logged reply's log-probs in fp32 (learner/train.py
    sampling_logprobs); vLLM sampled in bf16. The ratio exp(new - behavior) starts at
    exp(gap): the gap must be small next to the PPO clip (0.2), and the dual clip
    (TrainConfig.pg_ratio_cap) bounds any single token."""
    from core.modeling import load_model
    from core.records import sampling_params
    from learner.dataset import Sample
    from learner.train import collate, reply_logits, sampling_logprobs
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=server.token("gap"), max_retries=0)
    recs = []
    for text in ("tell me about rivers", "and about mountains", "one more, longer"):
        resp = c.chat.completions.create(model="rewardloop", messages=[{"role": "user", "content": text}],
                                         temperature=0.9, top_p=0.95, max_tokens=24)
        recs.append(record(rdb, server, resp.id))
    samples = [Sample(h["reply_id"], "gap", json.loads(h["prompt_ids"]), json.loads(h["token_ids"]),
                      json.loads(h["logprobs"]), 0.0, "base", sampling_params(json.loads(h["params"])))
               for h in recs]
    assert all(len(s.reply_ids) == len(s.behavior_logp) > 0 for s in samples)
    lm = load_model("tiny-random", models_dir, "cpu")
    batch = collate(samples, lm.tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        fp32 = sampling_logprobs(reply_logits(lm.model, batch), batch)          # [B,T]
    mask = batch.mask.bool()
    gap = (fp32 - batch.behavior)[mask].abs()
    assert gap.max() < 0.1, gap.max()            # bf16 vs fp32 on the tiny model: measured ~0.01
    assert (batch.behavior[mask] < 0).all()      # sampled, not greedy: real log-probs


def test_greedy_replies_log_zero(server, rdb):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=server.token("greedy"), max_retries=0)
    ask = lambda: c.chat.completions.create(model="rewardloop", messages=[{"role": "user", "content": "hello"}],
                                            temperature=0, max_tokens=8)
    first, second = ask(), ask()
    h = record(rdb, server, first.id)
    assert json.loads(h["logprobs"]) == [0.0] * int(h["n_tokens"]) and int(h["n_tokens"]) == 8
    assert record(rdb, server, second.id)["token_ids"] == h["token_ids"]   # greedy: the same reply


def test_stop_cancels_the_vllm_request(server, vllm, rdb):
    chat = Chat(server, server.token("stopper"))
    chat.send({"type": "user_message", "text": "a long story", "client_msg_id": "s1", "max_new_tokens": 400})
    start = chat.recv_type("reply_start")
    chat.recv_type("token")
    seen = time.monotonic() + 5    # the running gauge is refreshed once per engine step: it may lag a token
    while vllm_running(vllm.url) < 1 and time.monotonic() < seen:
        time.sleep(0.02)
    assert vllm_running(vllm.url) >= 1
    chat.send({"type": "stop", "reply_id": start["reply_id"]})
    end = chat.recv_type("reply_end")
    assert end["finish_reason"] == "cancelled" and end["n_tokens"] < 400
    h = record(rdb, server, start["reply_id"])
    assert h["finish_reason"] == "cancelled" and len(json.loads(h["token_ids"])) == int(h["n_tokens"])
    deadline = time.monotonic() + 10
    while vllm_running(vllm.url) > 0 and time.monotonic() < deadline:   # vLLM aborted it
        time.sleep(0.1)
    assert vllm_running(vllm.url) == 0
    assert chat.ask("next")["end"]["finish_reason"] in ("stop", "length")


def test_the_stop_token_is_logged_with_its_logprob_and_no_text(vllm, models_dir):
    """The engine over vLLM, directly: with the first token greedy decoding draws declared a stop
    token, the reply is that one token, logged (id and log-prob) with no text, finish "stop"."""
    import asyncio

    from core.sampling import SamplingParams
    from service.engine.events import EndEvent, GenerationRequest
    from service.engine.vllm import VllmEngine, load_tokenizer_and_shape
    tok = load_tokenizer_and_shape("tiny-random", models_dir).tokenizer
    prompt = tok("Once upon a time", add_special_tokens=False)["input_ids"]

    async def run(stop_ids, params):
        engine = VllmEngine([vllm.url], tok, len(tok), stop_ids)
        await engine.refresh()
        events = [e async for e in engine.submit(GenerationRequest(prompt, params))]
        await engine.aclose()
        return events
    first = asyncio.run(run({0}, SamplingParams(temperature=0, max_new_tokens=3)))
    assert isinstance(first[-1], EndEvent) and first[-1].finish_reason == "length" and len(first) == 4
    t = first[0].token_id
    for params in (SamplingParams(temperature=0, max_new_tokens=3), SamplingParams(temperature=1e-3, max_new_tokens=3)):
        events = asyncio.run(run({t}, params))
        assert [type(e).__name__ for e in events] == ["TokenEvent", "EndEvent"]
        assert events[0].token_id == t and events[0].text == ""
        assert events[1].finish_reason == "stop" and events[1].n_tokens == 1 and events[1].text_tail == ""
        assert events[0].logprob == 0.0 if params.greedy else -1.0 < events[0].logprob <= 0.0
