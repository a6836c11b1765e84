"""HTTP routes: anonymous sessions, the OpenAI-compatible API, feedback, health."""
from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from redis.exceptions import RedisError

from service.engine.core import EndEvent
from service.serving.auth import TokenError, User, create_token, new_user_id, verify_token
from service.serving.chat import TurnRefused
from service.serving.protocol import ProtocolError, parse_feedback

router = APIRouter()


class ApiError(Exception):
    """Rendered as an OpenAI-style JSON error body with this status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error" if status < 500 else
                                   "server_error", "code": code}}, status_code=status)


def rt(request: Request):
    return request.app.state.runtime


def bearer_user(request: Request) -> User:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise ApiError(401, "unauthorized", "missing bearer token: send Authorization: Bearer <token> "
                       "(create one with `rewardloop token create USER` or POST /api/session)")
    try:
        return verify_token(rt(request).secret, header[7:].strip())
    except TokenError as err:
        raise ApiError(401, "unauthorized", str(err)) from None


def require_ready(request: Request):
    runtime = rt(request)
    if not runtime.ready:
        raise ApiError(503, "not_ready", "the model is still loading; retry in a few seconds (see /readyz)")
    return runtime


async def json_body(request: Request) -> dict:
    raw = await request.body()
    limit = rt(request).settings.max_message_bytes * 8  # whole conversations come in one request
    if len(raw) > limit:
        raise ApiError(413, "too_large", f"request body is {len(raw)} bytes; the limit is {limit}")
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "bad_json", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "request body must be a JSON object")
    return body


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request):
    runtime = rt(request)
    checks = {"model": runtime.ready, "redis": False}
    if runtime.store is not None:
        try:
            checks["redis"] = await runtime.store.ping()
        except Exception as exc:  # any failure means "not ready"; the reason goes in the body
            checks["redis_error"] = str(exc)
    ok = checks["model"] and checks["redis"]
    return JSONResponse({"status": "ready" if ok else "not_ready", **checks}, status_code=200 if ok else 503)


@router.post("/api/session")
async def anonymous_session(request: Request):
    runtime = rt(request)
    uid = new_user_id()
    return {"token": create_token(runtime.secret, uid, runtime.settings.token_ttl_s), "user_id": uid}


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


@router.post("/v1/feedback")
async def post_feedback(request: Request):
    user = bearer_user(request)
    runtime = require_ready(request)
    body = await json_body(request)
    try:
        fb = parse_feedback(body)
        duplicate, fields = await runtime.feedback.record(fb, user)
    except ProtocolError as err:
        status = {"unknown_reply": 404, "forbidden": 403}.get(err.code, 400)
        raise ApiError(status, err.code, err.message) from None
    except RedisError:
        raise ApiError(503, "unavailable", "storage is unavailable for a moment; nothing was recorded: "
                       "retry in a few seconds with the same feedback_id") from None
    return {"feedback_id": fb.feedback_id, "duplicate": duplicate, "status": "stored"}
