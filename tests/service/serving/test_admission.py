"""Admission control: at most REWARDLOOP_MAX_QUEUE requests wait for their first token; past
it a request is told `busy` with retry_after at once (websocket) or 503 + Retry-After (HTTP);
a waiting client sees its place in the line; one user's concurrent replies are capped (429 /
rate_limited). Nothing acknowledged is lost: every reply that started ends and is logged."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import websockets

from core.keys import Keys
from core.modeling import load_model
from core.sampling import SamplingParams
from service.engine.core import EndEvent, Engine, EngineBusy, GenerationRequest, QueuedEvent
from tests.support.clients import Chat, http

LONG = "Tell me about the sea and the sky and the birds that fly between them. " * 12   # ~200 tokens


def test_the_engine_bounds_its_queue_and_tells_waiting_requests_their_position(models_dir):
    loaded = load_model("tiny-random", models_dir, "cpu")
    engine = Engine(loaded.model, loaded.tokenizer, loaded.device, stop_token_ids={-1}, prefill_chunk=1, max_queue=2)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def collect(handle):
        return [ev async for ev in handle]
    engine.start()
    try:
        params = SamplingParams(temperature=0.0, max_new_tokens=3)
        handles = [engine.submit(GenerationRequest(list(range(3, 203)), params), loop) for _ in range(2)]
        with pytest.raises(EngineBusy) as info:
            engine.submit(GenerationRequest([5, 6, 7], params), loop)
        assert info.value.retry_after >= 1 and info.value.waiting == 2
        events = [asyncio.run_coroutine_threadsafe(collect(h), loop).result(120) for h in handles]
    finally:
        engine.shutdown()
        loop.call_soon_threadsafe(loop.stop)
    assert [e[-1].finish_reason for e in events] == ["length", "length"]
    assert not any(isinstance(ev, QueuedEvent) for ev in events[0])       # taken at once
    assert [ev.position for ev in events[1] if isinstance(ev, QueuedEvent)] == [1]
    assert isinstance(events[1][-1], EndEvent) and engine.waiting == 0



async def _one(srv, i: int, text: str) -> list[dict]:
    async with websockets.connect(srv.ws_url, max_size=2 ** 22) as ws:
        await ws.send(json.dumps({"type": "hello", "token": srv.token(f"burst{i}")}))
        while json.loads(await ws.recv())["type"] != "ready":
            pass
        t0 = time.monotonic()
        await ws.send(json.dumps({"type": "user_message", "text": text, "client_msg_id": f"m{i}"}))
        frames = []
        while True:
            f = json.loads(await asyncio.wait_for(ws.recv(), 120))
            f["_t"] = time.monotonic() - t0
            frames.append(f)
            if f["type"] == "reply_end" or (f["type"] == "error" and f["code"] != "generation_failed"):
                return frames


def _post_completion(srv, user: str) -> tuple[int, object, dict]:
    req = urllib.request.Request(srv.url + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"model": "tiny-random", "messages": [
                                     {"role": "user", "content": "hi"}]}).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {srv.token(user)}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read() or b"{}")   # headers: case-insensitive


@pytest.mark.integration
def test_a_burst_past_the_queue_gets_busy_at_once_and_every_accepted_reply_ends_and_is_logged(server_factory, rdb):
    srv = server_factory(REWARDLOOP_MAX_QUEUE=2, REWARDLOOP_PREFILL_CHUNK=1, REWARDLOOP_MAX_MESSAGE_BYTES=20000,
                         REWARDLOOP_MAX_NEW_TOKENS=4)

    async def burst():
        clients = [asyncio.create_task(_one(srv, i, LONG)) for i in range(8)]
        await asyncio.sleep(0.3)   # the queue is full now (each prompt takes ~200 forwards)
        # six HTTP requests at once: with two places in the queue some must be refused, whether or
        # not the websocket burst still holds the queue by now (a single request raced its drain)
        http_answers = await asyncio.gather(*[asyncio.to_thread(_post_completion, srv, f"http-user{k}")
                                              for k in range(6)])
        return await asyncio.gather(*clients), http_answers
    results, http_answers = asyncio.run(burst())
    refused = [a for a in http_answers if a[0] != 200]
    assert refused, [a[0] for a in http_answers]
    status, headers, body = refused[0]
    busy = [r[-1] for r in results if r[-1]["type"] == "error"]
    answered = [r for r in results if r[-1]["type"] == "reply_end"]
    assert busy and all(b["code"] == "busy" and b["retry_after"] >= 1 and b["ref"].startswith("m") for b in busy)
    assert all(b["_t"] < 2.0 for b in busy), "busy must come at once"
    assert len(answered) >= 2
    assert any(f["type"] == "queued" and f["position"] >= 1 for r in answered for f in r), "no queue position seen"
    for frames in answered:   # nothing acknowledged is lost: started -> ended -> logged
        start = next(f for f in frames if f["type"] == "reply_start")
        assert frames[-1]["reply_id"] == start["reply_id"]
        assert rdb.hget(Keys(srv.prefix).reply(start['reply_id']), "finish_reason") == frames[-1]["finish_reason"]
    assert (status, body.get("error", {}).get("code")) == (503, "busy"), (status, headers, body)
    assert int(headers["Retry-After"]) >= 1
    chat = Chat(srv, srv.token("after-burst"))   # and the server serves on
    assert chat.ask("hello")["end"]["n_tokens"] > 0
    chat.close()


@pytest.mark.integration
def test_one_users_concurrent_replies_are_capped(server_factory):
    srv = server_factory(REWARDLOOP_MAX_USER_STREAMS=1, REWARDLOOP_MAX_NEW_TOKENS=400, REWARDLOOP_TEMPERATURE=0)
    first, second = Chat(srv, srv.token("greedy-user")), Chat(srv, srv.token("greedy-user"))
    first.send({"type": "user_message", "text": "tell me a long story", "client_msg_id": "a"})
    start = first.recv_type("reply_start")
    second.send({"type": "user_message", "text": "me too", "client_msg_id": "b"})
    err = second.recv_type("error")
    assert err["code"] == "rate_limited" and err["retry_after"] >= 1 and err["ref"] == "b"
    status, headers, body = _post_completion(srv, "greedy-user")
    assert status == 429 and int(headers["Retry-After"]) >= 1 and body["error"]["code"] == "rate_limited"
    assert http("GET", srv.url + "/readyz")[0] == 200
    first.send({"type": "stop", "reply_id": start["reply_id"]})
    while first.recv()["type"] != "reply_end":
        pass
    time.sleep(0.2)
    assert second.ask("now?")["end"]["n_tokens"] > 0     # the slot came back
    first.close()
    second.close()


async def _burst_client(srv, i: int) -> str:
    """Connect, hello, ask: what this client was answered ('answered', 'busy', or 'hello <code>')."""
    async with websockets.connect(srv.ws_url, max_size=2 ** 22, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "hello", "token": srv.token(f"many{i}")}))
        while (f := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] != "ready":
            if f["type"] == "error":
                return f"hello {f['code']}"
        await ws.send(json.dumps({"type": "user_message", "text": "hi", "client_msg_id": f"m{i}"}))
        while True:
            f = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if f["type"] == "reply_end":
                return "answered"
            if f["type"] == "error" and f["code"] != "generation_failed":
                return f["code"]


@pytest.mark.integration
def test_a_burst_of_more_connections_than_the_redis_pool_holds_gets_every_client_an_answer(server_factory):
    # 160 clients at once: more than the server's Redis pool (100). The pool used to raise
    # "Too many connections" on the excess hellos, which then sat until the 30 s hello timeout.
    srv = server_factory(REWARDLOOP_MAX_QUEUE=4, REWARDLOOP_MAX_NEW_TOKENS=2)

    async def burst():
        return await asyncio.gather(*[_burst_client(srv, i) for i in range(160)])
    answers = asyncio.run(burst())
    assert set(answers) <= {"answered", "busy"}, sorted(set(answers))
    assert answers.count("answered") >= 4 and answers.count("busy") >= 1
