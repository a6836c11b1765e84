"""The OpenAI-compatible API: /v1/models and /v1/chat/completions (plain and SSE)."""
from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service.api.common import ApiError, bearer_user, json_body, require_ready
from service.engine.core import EndEvent
from service.serving.chat import TurnRefused

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request):
    runtime = require_ready(request)
    return {"object": "list", "data": [{"id": runtime.loaded.model_id, "object": "model", "created": 0,
                                        "owned_by": "rewardloop"}]}


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "missing_field", "'messages' must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise ApiError(400, "bad_value", f"messages[{i}] must be {{role: system|user|assistant, content: str}}")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise ApiError(400, "bad_value", "the last message must have role 'user'")
    return out


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    user = bearer_user(request)
    runtime = require_ready(request)
    body = await json_body(request)
    messages = _messages(body)
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "bad_value", "only n=1 is supported; send two requests or use the websocket's candidates")
    try:
        params = runtime.chat.default_params(
            seed=body.get("seed"), temperature=body.get("temperature"), top_p=body.get("top_p"),
            max_new_tokens=body.get("max_completion_tokens") or body.get("max_tokens"))
        model = str(body.get("model") or "")
        pinned = runtime.chat.check_pinned(body.get("adapter_version") or (model.rsplit("@", 1)[1]
                                                                           if "@" in model else None))
        session_id = (await runtime.store.create_session(user.user_id)).session_id
        plan = runtime.chat.plan_messages(user, session_id, messages, params, adapter_version=pinned)
    except (TurnRefused, TypeError) as err:
        raise ApiError(400, getattr(err, "code", "bad_value"), str(err)) from None
    created = int(time.time())
    if body.get("stream"):
        return StreamingResponse(_sse(runtime, plan, created), media_type="text/event-stream")
    text, end = "", None
    async for ev in runtime.chat.stream(plan):
        if isinstance(ev, EndEvent):
            end = ev
        else:
            text += ev.text
    return {"id": plan.reply_id, "object": "chat.completion", "created": created, "model": _model_name(runtime, plan),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": _finish(end.finish_reason)}],
            "usage": {"prompt_tokens": len(plan.prompt_ids), "completion_tokens": end.n_tokens,
                      "total_tokens": len(plan.prompt_ids) + end.n_tokens},
            "rewardloop": {"session_id": session_id, "adapter_version": plan.adapter_version}}


def _model_name(runtime, plan) -> str:
    return f"{runtime.loaded.model_id}@{plan.adapter_version}"


def _finish(reason: str) -> str:
    return {"stop": "stop", "length": "length"}.get(reason, "stop")


async def _sse(runtime, plan, created):
    def chunk(delta: dict, finish=None) -> str:
        return "data: " + json.dumps({"id": plan.reply_id, "object": "chat.completion.chunk", "created": created,
                                      "model": _model_name(runtime, plan),
                                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"
    yield chunk({"role": "assistant", "content": ""})
    try:
        async for ev in runtime.chat.stream(plan):
            if isinstance(ev, EndEvent):
                yield chunk({}, _finish(ev.finish_reason))
            elif ev.text:
                yield chunk({"content": ev.text})
        yield "data: [DONE]\n\n"
    finally:  # the client went away mid-stream: free the engine now
        if plan.handle is not None:
            plan.handle.cancel()
