"""The OpenAI-compatible HTTP API with the official client, and its JSON errors."""
from __future__ import annotations

import json

import openai
import pytest

from service.serving.auth import create_token
from tests.helpers import http

pytestmark = pytest.mark.integration


def client(server, user="olga"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.token(user), max_retries=0)


def test_official_client_streams_a_completion_that_is_logged(server, rdb):
    chunks = list(client(server).chat.completions.create(
        model="whatever", messages=[{"role": "user", "content": "Say hi"}], stream=True, max_tokens=8))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reply_id = chunks[0].id
    assert all(c.id == reply_id for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[0].model.endswith("@base")
    stored = rdb.hgetall(f"{server.prefix}reply:{reply_id}")
    assert stored["text"] == text and stored["api"] == "openai" and stored["user_id"] == "olga"
    assert json.loads(stored["params"])["max_new_tokens"] == 8


def test_non_streaming_completion_and_models(server, rdb):
    c = client(server)
    resp = c.chat.completions.create(model="x", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_tokens=6, temperature=0)
    assert resp.usage.completion_tokens == len(json.loads(rdb.hget(f"{server.prefix}reply:{resp.id}", "token_ids")))
    assert rdb.hget(f"{server.prefix}reply:{resp.id}", "text") == resp.choices[0].message.content
    assert [m.id for m in c.models.list().data] == ["rewardloop/tiny-random-llama"]


def test_the_same_seed_gives_the_same_reply(server):
    c = client(server)
    a = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "Count"}], max_tokens=8,
                                  temperature=0.9, seed=7)
    b = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "Count"}], max_tokens=8,
                                  temperature=0.9, seed=7)
    assert a.choices[0].message.content == b.choices[0].message.content


@pytest.mark.parametrize("body, status, code", [
    ({"messages": []}, 400, "missing_field"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "bad_value"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 3}, 400, "bad_value"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": -1}, 400, "bad_value"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10 ** 6}, 400, "bad_value"),
])
def test_bad_requests_get_json_4xx(server, body, status, code):
    got, payload = http("POST", server.url + "/v1/chat/completions", body, token=server.token())
    assert got == status and payload["error"]["code"] == code and payload["error"]["message"]


def test_auth_and_malformed_bodies(server):
    url = server.url + "/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "x"}]}
    assert http("POST", url, body)[0] == 401
    status, payload = http("POST", url, body, token=create_token("wrong", "eve", 60))
    assert status == 401 and "signature" in payload["error"]["message"]
    status, payload = http("POST", url, raw=b"{not json", token=server.token())
    assert status == 400 and payload["error"]["code"] == "bad_json"
    status, payload = http("GET", server.url + "/nope")
    assert status == 404 and "error" in payload


def test_health_endpoints(server):
    assert http("GET", server.url + "/healthz") == (200, {"status": "ok"})
    status, body = http("GET", server.url + "/readyz")
    assert status == 200 and body["model"] and body["redis"]
    status, body = http("POST", server.url + "/api/session")
    assert status == 200 and body["token"].startswith("v1.") and body["user_id"].startswith("u_")
