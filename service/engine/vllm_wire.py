"""What crosses the HTTP boundary to a vLLM OpenAI server, as plain data: the completion request
body, the streamed chunks, the model list, the LoRA usage in its metrics, its errors, and what
this process knows of each server. Pure: no HTTP client here (vllm.py does the requests)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from service.engine.events import GenerationRequest

ADAPTER_PREFIX = "rl-v"


def adapter_name(version: str) -> str:
    """vLLM model name of an adapter version: a new name per version, never reused for other
    weights (vLLM keys its prefix cache by name: a reload under an old name could serve stale KV)."""
    return f"{ADAPTER_PREFIX}{version}"


class VllmError(RuntimeError):
    """A vLLM server answered with an error. `status` is its HTTP status (0 in a stream)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class AdapterRefused(ValueError):
    """A vLLM server refused to load an adapter (4xx): loading it again would not help."""


@dataclass
class VllmServer:
    url: str
    up: bool = True               # optimistic until a request or a refresh says otherwise
    base: str | None = None       # the served base model's name (/v1/models, parent null)
    root: str | None = None       # what it was started on (its --model)
    listed: set[str] = field(default_factory=set)   # model names it serves (base and LoRAs)
    roots: dict[str, str] = field(default_factory=dict)   # LoRA name -> the folder it was loaded from
    inflight: int = 0
    failures: int = 0
    last_error: str = ""
    retry_at: float = 0.0

    def usable(self, now: float) -> bool:
        return self.up or now >= self.retry_at

    def note_models(self, data: list[dict]) -> None:
        """What its /v1/models lists: the base model (parent null) and the LoRAs (with the folder
        each was loaded from)."""
        self.listed = {m["id"] for m in data}
        self.roots = {m["id"]: str(m.get("root") or "") for m in data if m.get("parent")}
        base = next((m for m in data if not m.get("parent")), None)
        self.base, self.root = (base["id"], base.get("root")) if base else (None, None)


def completion_body(model: str, request: GenerationRequest, stop_ids: list[int]) -> dict:
    p = request.params
    return {"model": model, "prompt": list(request.prompt_ids), "max_tokens": p.max_new_tokens,
            "temperature": p.temperature, "top_p": p.top_p, "seed": p.seed, "logprobs": 0,
            "return_token_ids": True, "stream": True, "stop_token_ids": stop_ids,
            "skip_special_tokens": True}


def parse_chunk(line: str) -> tuple[list[int], list[float | None], str | None] | None:
    """One SSE line of a streamed completion -> (token ids, their log-probs, finish reason);
    None for lines that carry nothing, StopIteration at [DONE]; VllmError for an error event."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        raise StopIteration
    obj = json.loads(data)
    if "error" in obj:
        err = obj["error"]
        raise VllmError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
    choice = obj["choices"][0]
    ids = list(choice.get("token_ids") or [])
    lps = list(((choice.get("logprobs") or {}).get("token_logprobs")) or [None] * len(ids))
    if len(lps) != len(ids):
        raise VllmError(f"vLLM sent {len(ids)} token ids but {len(lps)} log-probs in one chunk")
    return ids, lps, choice.get("finish_reason")


def error_message(raw: bytes) -> str:
    try:
        obj = json.loads(raw)
        err = obj.get("error", obj)
        return str(err.get("message", err) if isinstance(err, dict) else err)[:500]
    except (ValueError, AttributeError):
        return raw[:500].decode(errors="replace")


def lora_in_use(metrics_text: str, name: str) -> tuple[bool, float]:
    """Whether a server's newest `vllm:lora_requests_info` sample lists LoRA `name` as running or
    waiting, and that sample's time (0.0 when there is none)."""
    newest, busy = 0.0, False
    for line in metrics_text.splitlines():
        if line.startswith("vllm:lora_requests_info{"):
            labels, _, value = line.rpartition(" ")
            if float(value) >= newest:
                newest = float(value)
                busy = any(f'{k}="' in labels and name in labels.split(f'{k}="')[1].split('"')[0].split(",")
                           for k in ("running_lora_adapters", "waiting_lora_adapters"))
    return busy, newest
