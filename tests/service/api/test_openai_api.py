"""The OpenAI-compatible HTTP API with the official client: logging, the error shape and
statuses the client maps to its exception classes, fields refused by name."""
from __future__ import annotations

import time

import openai
import pytest

from service.serving.auth import create_token
from tests.support.clients import http, openai_client

pytestmark = pytest.mark.integration
TINY_ID = "rewardloop/tiny-random-llama"
MSG = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": -1}, "frequency_penalty"),
    ({"logprobs": True, "top_logprobs": 2}, "top_logprobs"),
    ({"store": False}, "store"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
])
def test_unimplemented_fields_are_refused_by_name(server, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        openai_client(server, "olga").chat.completions.create(model="rewardloop", messages=MSG, max_tokens=2, **extra)
    assert err.value.status_code == 400 and err.value.param == param and err.value.code == "unsupported_parameter"
    assert param in err.value.message


def test_no_op_values_of_unimplemented_fields_are_accepted(server):
    resp = openai_client(server, "olga").chat.completions.create(
        model="rewardloop", messages=MSG, max_tokens=2, presence_penalty=0, frequency_penalty=0.0, logit_bias={},
        response_format={"type": "text"}, tool_choice="none", store=True, service_tier="auto",
        modalities=["text"], metadata={"k": "v"}, logprobs=True, top_logprobs=0)
    assert resp.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("body, code, param", [
    ({"model": "rewardloop", "messages": []}, "bad_value", "messages"),
    ({"messages": MSG}, "missing_field", "model"),
    ({"model": "rewardloop", "messages": [{"role": "robot", "content": "x"}]}, "bad_value", "messages[0].role"),
    ({"model": "rewardloop", "messages": [{"role": "tool", "content": "x", "tool_call_id": "t"}]},
     "unsupported_parameter", "messages[0].role"),
    ({"model": "rewardloop", "messages": [{"role": "user", "content": "x", "name": "bob"}]},
     "unsupported_parameter", "messages[0].name"),
    ({"model": "rewardloop", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "unsupported_parameter", "messages[0].content[0].type"),
    ({"model": "rewardloop", "messages": [{"role": "assistant", "content": "x"}]}, "bad_value", "messages"),
    ({"model": "rewardloop", "messages": MSG, "n": 5}, "bad_value", "n"),
    ({"model": "rewardloop", "messages": MSG, "n": True}, "bad_value", "n"),
    ({"model": "rewardloop", "messages": MSG, "temperature": -1}, "bad_value", "temperature"),
    ({"model": "rewardloop", "messages": MSG, "temperature": "hot"}, "bad_value", "temperature"),
    ({"model": "rewardloop", "messages": MSG, "top_p": 0}, "bad_value", "top_p"),
    ({"model": "rewardloop", "messages": MSG, "max_tokens": 10 ** 6}, "bad_value", "max_tokens"),
    ({"model": "rewardloop", "messages": MSG, "max_completion_tokens": 10 ** 6}, "bad_value", "max_completion_tokens"),
    ({"model": "rewardloop", "messages": MSG, "max_tokens": 0}, "bad_value", "max_tokens"),
    ({"model": "rewardloop", "messages": MSG, "seed": 2 ** 70}, "bad_value", "seed"),
    ({"model": "rewardloop", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "bad_value", "stop"),
    ({"model": "rewardloop", "messages": MSG, "stop": ""}, "bad_value", "stop"),
    ({"model": "rewardloop", "messages": MSG, "stop": 5}, "bad_value", "stop"),
    ({"model": "rewardloop", "messages": MSG, "stream_options": {"include_usage": True}}, "bad_value",
     "stream_options"),
    ({"model": "rewardloop", "messages": MSG, "stream": True, "stream_options": {"x": 1}}, "unknown_parameter",
     "stream_options.x"),
    ({"model": "rewardloop", "messages": MSG, "frobnicate": 1}, "unknown_parameter", "frobnicate"),
])
def test_bad_requests_get_400_naming_the_field(server, body, code, param):
    got, payload = http("POST", server.url + "/v1/chat/completions", body, token=server.token())
    assert got == 400, payload
    err = payload["error"]
    assert (err["code"], err["param"], err["type"]) == (code, param, "invalid_request_error") and err["message"]


@pytest.mark.parametrize("model", ["gpt-4o", "rewardloop@99", f"{TINY_ID}@v42"])
def test_unknown_model_is_404_model_not_found(server, model):
    with pytest.raises(openai.NotFoundError) as err:
        openai_client(server, "olga").chat.completions.create(model=model, messages=MSG, max_tokens=2)
    assert err.value.code == "model_not_found" and err.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        openai_client(server, "olga").models.retrieve(model)


@pytest.mark.parametrize("model", ["rewardloop", "tiny-random", TINY_ID, f"{TINY_ID}@base", "rewardloop@base"])
def test_aliases_are_served(server, model):
    resp = openai_client(server, "olga").chat.completions.create(model=model, messages=MSG, max_tokens=2)
    assert resp.model == f"{TINY_ID}@base"


def test_statuses_map_to_the_clients_exception_classes(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key=create_token("wrong", "eve", 60), max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model="rewardloop", messages=MSG)
    assert "signature" in err.value.message and err.value.body["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    huge = [{"role": "user", "content": "x" * (8192 * 8)}]
    with pytest.raises(openai.APIStatusError) as err:
        openai_client(server, "olga").chat.completions.create(model="rewardloop", messages=huge)
    assert err.value.status_code == 413 and err.value.code == "too_large"
    with pytest.raises(openai.PermissionDeniedError):   # feedback on someone else's reply
        reply = openai_client(server, "ann").chat.completions.create(model="rewardloop", messages=MSG, max_tokens=2)
        openai_client(server, "bob").post("/feedback", cast_to=object, body={
            "feedback_id": "f1", "reply_id": reply.id, "kind": "thumbs", "value": 1})


def test_auth_and_malformed_bodies(server):
    url = server.url + "/v1/chat/completions"
    body = {"model": "rewardloop", "messages": MSG}
    status, payload = http("POST", url, body)
    assert status == 401 and payload["error"]["type"] == "authentication_error"
    status, payload = http("POST", url, raw=b"{not json", token=server.token())
    assert status == 400 and payload["error"]["code"] == "bad_json"
    status, payload = http("POST", url, raw=b"[1, 2]", token=server.token())
    assert status == 400 and payload["error"]["code"] == "bad_json"
    status, payload = http("POST", url, raw=b"x" * (8192 * 8 + 1), token=server.token())
    assert status == 413 and payload["error"]["code"] == "too_large"
    status, payload = http("GET", server.url + "/nope")
    assert status == 404 and "error" in payload


def test_openapi_describes_every_field(server):
    status, spec = http("GET", server.url + "/openapi.json")
    assert status == 200
    schemas = spec["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    for name in ("model", "messages", "stop", "n", "logprobs", "top_logprobs", "stream_options", "seed", "user",
                 "max_completion_tokens", "tools", "response_format", "logit_bias", "presence_penalty"):
        assert name in chat, name
    assert schemas["ChatCompletionRequest"]["additionalProperties"] is False
    assert "prompt" in schemas["CompletionRequest"]["properties"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model_id}"} <= set(spec["paths"])


def test_health_endpoints(server):
    assert http("GET", server.url + "/healthz") == (200, {"status": "ok"})
    status, body = http("GET", server.url + "/readyz")
    assert status == 200 and body["model"] and body["redis"]
    status, body = http("POST", server.url + "/api/session")
    assert status == 200 and body["token"].startswith("v1.") and body["user_id"].startswith("u_")


def test_admission_refusals_are_statuses_before_any_stream(server_factory):
    """n candidates over this user's limit: 429 (RateLimitError) with Retry-After, for a
    stream too (before its 200), and nothing half-started keeps the user's slots."""
    srv = server_factory(REWARDLOOP_MAX_USER_STREAMS=1)
    c = openai_client(srv, "lim")
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model="rewardloop", messages=MSG, n=2, max_tokens=4, stream=stream)
        assert err.value.response.headers.get("retry-after") and err.value.code == "rate_limited"
    deadline = time.monotonic() + 10   # the cancelled candidate ends at the engine's next step
    while True:
        try:
            resp = c.chat.completions.create(model="rewardloop", messages=MSG, max_tokens=4)
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the cancelled candidate kept the user's slot"
            time.sleep(0.1)
    assert resp.choices[0].finish_reason in ("stop", "length")
