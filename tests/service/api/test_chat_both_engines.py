"""The chat flows that matter, on both engines: each test runs against a rewardloop server on
the local engine and against one with REWARDLOOP_ENGINE=vllm in front of a real vLLM server (CPU
build, bf16, the tiny model; skipped where `.venv-vllm` is missing). The tests marked `vllm_only`
cover what is vLLM's own: the behavior log-probs against the learner's fp32 recomputation,
greedy 0.0, `stop` aborting the vLLM request, what a server reports, the stop token."""
from __future__ import annotations

import json
import time

import pytest
import torch

from core.keys import Keys
from tests.support.clients import Chat, http, openai_client
from tests.support.processes import ADMIN, server_starter
from tests.support.redis_view import events, stored_reply
from tests.support.vllm_servers import TINY_ID, require_vllm, start_vllm, vllm_running

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "Tell me a story"}]
VLLM_ENV = dict(REWARDLOOP_MAX_NEW_TOKENS=400, REWARDLOOP_CONTEXT_BUDGET=2048)
vllm_only = pytest.mark.parametrize("server", ["vllm"], indirect=True)


@pytest.fixture(scope="module")
def vllm(models_dir, tmp_path_factory):
    require_vllm()
    procs = start_vllm(models_dir, tmp_path_factory.mktemp("vllm"))
    yield procs[0]
    for p in procs:
        p.stop()


@pytest.fixture(scope="module", params=["local", "vllm"])
def server(request, models_dir, redis_url, tmp_path_factory):
    """This module's rewardloop server, on each engine in turn (all the local runs first)."""
    start, started = server_starter(redis_url, tmp_path_factory.mktemp(f"server-{request.param}"))
    if request.param == "local":
        yield start()
    else:
        yield start(REWARDLOOP_ENGINE="vllm", REWARDLOOP_VLLM_URLS=request.getfixturevalue("vllm").url, **VLLM_ENV)
    for proc in started:
        proc.stop()


def test_choose_between_two_candidates_moves_the_history(server, rdb):
    chat = Chat(server, server.token("hana"))
    chat.send({"type": "user_message", "text": "pick one", "client_msg_id": "c", "candidates": 2})
    first, second = chat.collect(), chat.collect()
    ids = first["start"]["candidates"]
    assert ids == second["start"]["candidates"] and len(ids) == 2
    assert [first["start"]["reply_id"], second["start"]["reply_id"]] == ids
    history = Keys(server.prefix).session(chat.session_id)
    assert rdb.lrange(history, 0, -1) == [ids[0]]
    assert chat.feedback(ids[1], "choose", ids[0], "pick")["type"] == "ack"
    assert rdb.lrange(history, 0, -1) == [ids[1]]            # the chosen one is the conversation now
    [ev] = events(server, rdb, feedback_id="pick")
    assert ev["kind"] == "choose" and ev["value"] == ids[0] and ev["reply_id"] == ids[1]
    follow = chat.ask("and then?")
    msgs = json.loads(rdb.hget(Keys(server.prefix).reply(follow['start']['reply_id']), "prompt_messages"))
    assert {"role": "assistant", "content": second["text"]} in msgs


def test_regenerate_streams_a_linked_reply_that_replaces_the_old_one(server, rdb):
    chat = Chat(server, server.token("ivan"))
    old = chat.ask("tell me a joke")["start"]["reply_id"]
    chat.send({"type": "feedback", "feedback_id": "regen", "reply_id": old, "kind": "regenerate"})
    assert chat.recv_type("ack")["feedback_id"] == "regen"
    new = chat.collect()
    assert new["start"]["replaces"] == old and new["start"]["turn"] == 0
    assert rdb.hget(Keys(server.prefix).reply(new['start']['reply_id']), "replaces") == old
    assert rdb.lrange(Keys(server.prefix).session(chat.session_id), 0, -1) == [new["start"]["reply_id"]]
    assert rdb.lrange(Keys(server.prefix).session_replies(chat.session_id), 0, -1) == [old, new["start"]["reply_id"]]
    assert len(events(server, rdb, reply_id=old, kind="regenerate")) == 1


def test_official_client_streams_a_completion_that_is_logged(server, rdb):
    chunks = list(openai_client(server, "olga").chat.completions.create(
        model="rewardloop", messages=[{"role": "user", "content": "Say hi"}], stream=True, max_tokens=8))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reply_id = chunks[0].id
    assert all(c.id == reply_id for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[0].model == f"{TINY_ID}@base"
    stored = rdb.hgetall(Keys(server.prefix).reply(reply_id))
    assert stored["text"] == text and stored["api"] == "openai" and stored["user_id"] == "olga"
    assert json.loads(stored["params"])["max_new_tokens"] == 8


def test_non_streaming_completion(server, rdb):
    resp = openai_client(server, "olga").chat.completions.create(model=TINY_ID, messages=[
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hel"},
                                                                                   {"type": "text", "text": "lo"}]}],
        max_tokens=6, temperature=0)
    stored = rdb.hgetall(Keys(server.prefix).reply(resp.id))
    assert resp.usage.completion_tokens == len(json.loads(stored["token_ids"])) == int(stored["n_tokens"])
    assert resp.usage.prompt_tokens == len(json.loads(stored["prompt_ids"]))
    assert stored["text"] == resp.choices[0].message.content and resp.choices[0].logprobs is None
    assert json.loads(stored["prompt_messages"])[-2:] == [{"role": "system", "content": "Be brief."},
                                                          {"role": "user", "content": "Hello"}]
    assert resp.choices[0].model_extra["reply_id"] == resp.id == resp.model_extra["rewardloop"]["reply_ids"][0]


def test_the_same_seed_gives_the_same_reply(server):
    c = openai_client(server, "olga")
    a, b = (c.chat.completions.create(model="rewardloop", messages=[{"role": "user", "content": "Count"}],
                                      max_tokens=8, temperature=0.9, seed=7) for _ in range(2))
    assert a.choices[0].message.content == b.choices[0].message.content


def test_stop_ends_the_text_before_the_stop_string_and_the_log_is_what_was_sent(server, rdb):
    c = openai_client(server, "fiona")
    full = c.chat.completions.create(model="rewardloop", messages=MSG, max_tokens=12, temperature=0)
    text = full.choices[0].message.content
    assert len(text) > 6, text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    expect = text[:text.find(stop)]
    got = c.chat.completions.create(model="rewardloop", messages=MSG, max_tokens=12, temperature=0,
                                    stop=[stop, "\u2603never"])
    assert got.choices[0].message.content == expect and got.choices[0].finish_reason == "stop"
    rec, ref = stored_reply(rdb, server, decode=True, reply_id=got.id), stored_reply(rdb, server, decode=True, reply_id=full.id)
    k = int(rec["n_tokens"])
    # the tokens through the one that completed the stop string: a prefix of the unstopped greedy run
    assert rec["token_ids"] == ref["token_ids"][:k] and len(rec["logprobs"]) == k < int(ref["n_tokens"])
    assert rec["text"] == expect and rec["stop_string"] == stop and rec["finish_reason"] == "stop"
    assert got.usage.completion_tokens == k
    chunks = list(c.chat.completions.create(model="rewardloop", messages=MSG, max_tokens=12, temperature=0,
                                            stop=stop, stream=True))
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == expect == stored_reply(rdb, server, decode=True, reply_id=chunks[0].id)["text"]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n2_streams_both_candidates(server, rdb):
    chunks = list(openai_client(server, "fiona").chat.completions.create(model="rewardloop", messages=MSG, n=2, max_tokens=5,
                                                         stream=True, seed=3))
    texts, ends = {0: "", 1: ""}, {}
    for ch in chunks:
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                ends[choice.index] = choice.model_extra["reply_id"]
    assert set(ends) == {0, 1}
    assert [stored_reply(rdb, server, decode=True, reply_id=ends[i])["text"] for i in (0, 1)] == [texts[0], texts[1]]


def test_returned_logprobs_are_the_stored_behavior_logprobs(server, rdb):
    c = openai_client(server, "fiona")
    resp = c.chat.completions.create(model="rewardloop", messages=MSG, max_tokens=8, temperature=0.8, top_p=0.9,
                                     seed=5, logprobs=True)
    rec = stored_reply(rdb, server, decode=True, reply_id=resp.id)
    content = resp.choices[0].logprobs.content
    assert [t.logprob for t in content] == rec["logprobs"] and len(content) == len(rec["token_ids"])
    assert all(t.logprob <= 0 for t in content) and any(t.logprob < 0 for t in content)
    assert all(t.top_logprobs == [] and bytes(t.bytes).decode() == t.token for t in content)
    chunks = list(c.chat.completions.create(model="rewardloop", messages=MSG, max_tokens=8, temperature=0.8,
                                            top_p=0.9, seed=5, logprobs=True, stream=True))
    streamed = [t.logprob for ch in chunks if ch.choices and ch.choices[0].logprobs
                for t in ch.choices[0].logprobs.content]
    assert streamed == stored_reply(rdb, server, decode=True, reply_id=chunks[0].id)["logprobs"] == rec["logprobs"]  # same seed, same draw


def test_streamed_tokens_equal_the_logged_reply(server, rdb):
    chat = Chat(server, server.token("alice"))
    r = chat.ask("What is the capital of France?")
    assert r["start"]["adapter_version"] == "base"
    stored = stored_reply(rdb, server, r["start"]["reply_id"])
    assert stored["text"] == r["text"] and r["text"]
    assert stored["user_id"] == "alice" and stored["session_id"] == chat.session_id
    token_ids, logprobs = json.loads(stored["token_ids"]), json.loads(stored["logprobs"])
    assert len(token_ids) == len(logprobs) == r["end"]["n_tokens"] == int(stored["n_tokens"])
    assert all(lp <= 0 for lp in logprobs)
    params = json.loads(stored["params"])
    assert {"temperature", "top_p", "max_new_tokens", "seed"} <= params.keys()
    for field in ("prompt_ids", "prompt_messages", "model_id", "queued_at", "first_token_at", "ended_at",
                  "finish_reason", "turn"):
        assert stored.get(field), field
    kinds = [(f["kind"], f.get("reply_id")) for _, f in rdb.xrange(Keys(server.prefix).events)
             if f.get("session_id") == chat.session_id]
    assert ("user_message", None) in kinds and ("reply", r["start"]["reply_id"]) in kinds
    chat.close()


def test_multi_turn_history_is_in_the_prompt(server, rdb):
    chat = Chat(server, server.token("bob"))
    first = chat.ask("My name is Zanzibar.")
    second = chat.ask("What is my name?")
    assert second["start"]["turn"] == 1
    msgs = json.loads(stored_reply(rdb, server, second["start"]["reply_id"])["prompt_messages"])
    assert msgs[0]["role"] == "system"
    assert {"role": "user", "content": "My name is Zanzibar."} in msgs
    assert {"role": "assistant", "content": first["text"]} in msgs
    assert msgs[-1] == {"role": "user", "content": "What is my name?"}
    assert rdb.lrange(Keys(server.prefix).session(chat.session_id), 0, -1) == [
        first["start"]["reply_id"], second["start"]["reply_id"]]
    chat.close()


@vllm_only
def test_status_names_the_vllm_server(server, vllm):
    code, body = http("GET", server.url + "/admin/adapters", token=ADMIN)
    assert code == 200, body
    st = body["server"]
    assert st["engine"] == "vllm"
    [srv] = st["servers"]
    assert srv["url"] == vllm.url and srv["up"] and srv["base"] == "rewardloop/tiny-random-llama"
    assert http("GET", server.url + "/readyz")[0] == 200


@vllm_only
def test_logged_logprobs_are_vllms_and_close_to_the_learners_fp32_recomputation(server, rdb, models_dir):
    """The learner recomputes every logged reply's log-probs in fp32 (learner/train.py
    sampling_logprobs); vLLM sampled in bf16. The ratio exp(new - behavior) starts at
    exp(gap): the gap must be small next to the PPO clip (0.2), and the dual clip
    (TrainConfig.pg.ratio_cap) bounds any single token."""
    from core.modeling import load_model
    from core.records import sampling_params
    from learner.dataset import Sample
    from learner.train import collate, reply_logits, sampling_logprobs
    c = openai_client(server, "gap")
    recs = []
    for text in ("tell me about rivers", "and about mountains", "one more, longer"):
        resp = c.chat.completions.create(model="rewardloop", messages=[{"role": "user", "content": text}],
                                         temperature=0.9, top_p=0.95, max_tokens=24)
        recs.append(stored_reply(rdb, server, resp.id))
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


@vllm_only
def test_greedy_replies_log_zero(server, rdb):
    c = openai_client(server, "greedy")
    ask = lambda: c.chat.completions.create(model="rewardloop", messages=[{"role": "user", "content": "hello"}],
                                            temperature=0, max_tokens=8)
    first, second = ask(), ask()
    h = stored_reply(rdb, server, first.id)
    assert json.loads(h["logprobs"]) == [0.0] * int(h["n_tokens"]) and int(h["n_tokens"]) == 8
    assert stored_reply(rdb, server, second.id)["token_ids"] == h["token_ids"]   # greedy: the same reply


@vllm_only
def test_stop_cancels_the_vllm_request(server, vllm, rdb):
    chat = Chat(server, server.token("stopper"))
    for attempt in range(3):
        chat.send({"type": "user_message", "text": "a long story", "client_msg_id": f"s{attempt}",
                   "max_new_tokens": 400})
        start = chat.recv_type("reply_start")
        chat.recv_type("token")
        seen = time.monotonic() + 10   # the running gauge is refreshed once per engine step: it may lag a token
        while vllm_running(vllm.url) < 1 and time.monotonic() < seen:
            time.sleep(0.02)
        if vllm_running(vllm.url) >= 1:
            break
        chat.recv_type("reply_end")     # the random model drew its stop token before the gauge showed it: again
    else:
        pytest.fail("vLLM never reported the reply as running in 3 tries")
    chat.send({"type": "stop", "reply_id": start["reply_id"]})
    end = chat.recv_type("reply_end")
    assert end["finish_reason"] == "cancelled" and end["n_tokens"] < 400
    h = stored_reply(rdb, server, start["reply_id"])
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
