"""What crosses the HTTP boundary to a vLLM server, on plain data (service/engine/vllm_wire.py):
no vLLM needed. The vLLM engine's end-to-end tests (test_vllm_*.py) run the real servers."""
from __future__ import annotations

import json

import pytest

from core.sampling import SamplingParams
from service.engine.events import GenerationRequest
from service.engine.vllm_wire import (
    VllmError,
    VllmServer,
    adapter_name,
    completion_body,
    error_message,
    lora_in_use,
    parse_chunk,
)


def _line(obj) -> str:
    return "data: " + json.dumps(obj)


def test_the_completion_body_sends_our_own_token_ids_and_sampling():
    req = GenerationRequest([5, 6, 7], SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=12, seed=3))
    body = completion_body("rl-v2", req, [2, 0])
    assert body["prompt"] == [5, 6, 7] and body["model"] == "rl-v2" and body["stop_token_ids"] == [2, 0]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.7, 0.9, 12, 3)
    assert body["logprobs"] == 0 and body["return_token_ids"] and body["stream"]
    assert adapter_name("2") == "rl-v2"


def test_a_streamed_chunk_gives_token_ids_log_probs_and_the_finish_reason():
    line = _line({"choices": [{"token_ids": [4, 9], "logprobs": {"token_logprobs": [-0.5, -1.0]},
                               "finish_reason": "length"}]})
    assert parse_chunk(line) == ([4, 9], [-0.5, -1.0], "length")
    assert parse_chunk(": keep-alive") is None and parse_chunk("") is None
    with pytest.raises(StopIteration):
        parse_chunk("data: [DONE]")


def test_a_chunk_that_is_an_error_or_does_not_add_up_raises():
    with pytest.raises(VllmError, match="out of memory"):
        parse_chunk(_line({"error": {"message": "out of memory"}}))
    with pytest.raises(VllmError, match="2 token ids but 1 log-probs"):
        parse_chunk(_line({"choices": [{"token_ids": [4, 9], "logprobs": {"token_logprobs": [-0.5]}}]}))


def test_a_server_notes_its_base_model_and_the_folders_of_its_loras():
    server = VllmServer("http://x")
    server.note_models([{"id": "tiny", "parent": None, "root": "/models/tiny"},
                        {"id": "rl-v1", "parent": "tiny", "root": "/adapters/v1"}])
    assert (server.base, server.root, server.listed) == ("tiny", "/models/tiny", {"tiny", "rl-v1"})
    assert server.roots == {"rl-v1": "/adapters/v1"}
    assert server.usable(0.0), "up until a request or a refresh says otherwise"


def test_error_messages_are_read_from_json_or_raw_bytes():
    assert error_message(b'{"error": {"message": "no such lora"}}') == "no such lora"
    assert error_message(b'{"message": "bad"}') == "bad"
    assert error_message(b"<html>502</html>") == "<html>502</html>"


def test_lora_use_is_read_from_the_newest_metrics_sample():
    text = "\n".join([
        '# HELP vllm:lora_requests_info Running stats on lora requests.',
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="rl-v1,rl-v2",waiting_lora_adapters=""} 100.0',
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="",waiting_lora_adapters="rl-v3"} 200.0',
    ])
    assert lora_in_use(text, "rl-v3") == (True, 200.0)
    assert lora_in_use(text, "rl-v1") == (False, 200.0), "an older sample's running adapters are over"
    assert lora_in_use("vllm:other 1.0", "rl-v1") == (False, 0.0)
