"""Property-based requests from /openapi.json against a real server (Schemathesis): whatever
a generated body holds -- valid (positive) or deliberately invalid (negative) -- the OpenAI
routes answer without a 5xx, and every refusal is OpenAI's error shape. A bounded number of
examples per endpoint and mode keeps the run near a minute."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

pytestmark = pytest.mark.integration
EXAMPLES = 60   # per endpoint and mode: about 30 s on a loaded 2-core box


HONOURED = {"temperature", "top_p", "n", "stream", "stream_options", "stop", "max_tokens", "max_completion_tokens",
            "seed", "user", "logprobs", "metadata", "safety_identifier", "prompt"}


def servable(case) -> None:
    """Every other generated body is cut down to the fields the server honours, with a model id
    it serves: random values then reach generation, not only validation."""
    body = case.body
    for key in [k for k in body if k not in HONOURED]:
        del body[key]
    body["model"] = "rewardloop"
    if case.path == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": "hi"}]
    elif isinstance(body.get("logprobs"), int):
        body["logprobs"] = 0


def check(case, token: str, statuses: list[int]) -> None:
    body = case.body if isinstance(case.body, dict) else None
    if body is not None and case.path in ("/v1/chat/completions", "/v1/completions"):
        if len(statuses) % 2:
            servable(case)
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(key), int) and body[key] > 8:
                body[key] = 8  # still in range; shorter replies keep the run short
    response = case.call(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    statuses.append(response.status_code)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500], case.body)
    if response.status_code >= 400:
        err = response.json()["error"]
        assert isinstance(err["message"], str) and err["message"] and "type" in err and "param" in err


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_5xx_and_errors_in_openai_shape(server, mode):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json").include(path_regex="^/v1/")
    token = server.token("schemathesis")
    tried: dict[str, list[int]] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        statuses = tried.setdefault(f"{op.method.upper()} {op.path}", [])

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            check(case, token, statuses)
        try:
            run()
        except Unsatisfiable:   # nothing to get wrong (no body, no parameters): no negative case exists
            assert mode is GenerationMode.NEGATIVE and not statuses
    for route in ("POST /v1/chat/completions", "POST /v1/completions"):
        assert len(tried[route]) >= 10, (route, tried[route])
    if mode is GenerationMode.POSITIVE:
        assert any(s == 200 for s in tried["POST /v1/chat/completions"]), tried
