"""Each chat-completion field honoured, checked against what the log stores: stop, n
(candidates that take feedback), logprobs, the usage chunk, max_completion_tokens, user,
and a failed generation (500, or an SSE error event), with the official client."""
from __future__ import annotations

import json
import shutil

import openai
import pytest

from core.keys import Keys
from tests.support.clients import http, openai_client
from tests.support.processes import MODELS
from tests.support.redis_view import stored_reply

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "Tell me a story"}]


def test_n2_gives_two_logged_candidates_that_take_feedback(server, rdb):
    c = openai_client(server, "nina")
    resp = c.chat.completions.create(model="rewardloop", messages=MSG, n=2, max_tokens=6, temperature=1.0, seed=11)
    ids = [ch.model_extra["reply_id"] for ch in resp.choices]
    assert [ch.index for ch in resp.choices] == [0, 1] and len(set(ids)) == 2 and resp.id == ids[0]
    recs = [stored_reply(rdb, server, i, decode=True) for i in ids]
    assert all(r["candidates"] == ids and r["session_id"] == recs[0]["session_id"] for r in recs)
    assert [json.loads(r["params"])["seed"] for r in recs] == [11, 12]
    assert resp.usage.completion_tokens == sum(int(r["n_tokens"]) for r in recs)
    assert [ch.message.content for ch in resp.choices] == [r["text"] for r in recs]
    token = server.token("nina")
    for i, rid in enumerate(ids):
        status, body = http("POST", server.url + "/v1/feedback", {"feedback_id": f"t{i}", "reply_id": rid,
                                                                   "kind": "thumbs", "value": 1}, token=token)
        assert status == 200 and body["duplicate"] is False
    status, body = http("POST", server.url + "/v1/feedback", {"feedback_id": "ch", "reply_id": ids[1],
                                                               "kind": "choose", "value": ids[0]}, token=token)
    assert status == 200, body
    assert rdb.lrange(Keys(server.prefix).session(recs[0]['session_id']), 0, -1) == [ids[1]]


def test_usage_chunk_comes_last_with_no_choices(server, rdb):
    chunks = list(openai_client(server, "fiona").chat.completions.create(
        model="rewardloop", messages=MSG, max_tokens=6, stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    rec = stored_reply(rdb, server, last.id, decode=True)
    assert last.choices == [] and last.usage.completion_tokens == int(rec["n_tokens"])
    assert last.usage.prompt_tokens == len(json.loads(rec["prompt_ids"]))
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1]) and all(ch.choices for ch in chunks[:-1])
    plain = list(openai_client(server, "fiona").chat.completions.create(model="rewardloop", messages=MSG, max_tokens=3, stream=True))
    assert all(ch.choices for ch in plain)   # no usage chunk unless asked


def test_max_completion_tokens_user_and_metadata_are_logged(server, rdb):
    resp = openai_client(server, "fiona").chat.completions.create(model="rewardloop", messages=MSG, max_completion_tokens=3,
                                                  max_tokens=9, user="end-user-7", metadata={"app": "t"})
    rec = stored_reply(rdb, server, resp.id, decode=True)
    assert json.loads(rec["params"])["max_new_tokens"] == 3 and resp.usage.completion_tokens <= 3
    assert rec["client"] == {"user": "end-user-7", "metadata": {"app": "t"}} and rec["user_id"] == "fiona"


@pytest.fixture(scope="module")
def poisoned(models_dir, tmp_path_factory):
    """The tiny model with one NaN embedding row: a prompt holding that token fails for real."""
    import torch
    from transformers import AutoModelForCausalLM
    folder = tmp_path_factory.mktemp("poisoned") / "tiny-poisoned"
    src = MODELS / "tiny-random-llama"
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():   # untie first: the output head must stay finite
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.clone())
        model.get_input_embeddings().weight[4242] = float("nan")
    model.save_pretrained(folder)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            shutil.copy(f, folder / f.name)
    return folder


def test_a_failed_generation_is_500_or_an_sse_error_event(server_factory, poisoned, rdb):
    srv = server_factory(REWARDLOOP_MODEL=str(poisoned))
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key=srv.token("gil"), max_retries=0)
    with pytest.raises(openai.InternalServerError) as err:
        c.completions.create(model="rewardloop", prompt=[5, 4242, 7], max_tokens=4, temperature=0.7)
    assert err.value.code == "generation_failed" and "generation failed" in err.value.message
    with pytest.raises(openai.APIError) as err:
        list(c.completions.create(model="rewardloop", prompt=[5, 4242, 7], max_tokens=4, temperature=0.7,
                                  stream=True))
    assert "generation failed" in err.value.message
    ok = c.completions.create(model="rewardloop", prompt=[5, 6, 7], max_tokens=4, temperature=0.7)
    assert ok.choices[0].finish_reason in ("stop", "length")   # one failed request ends alone
