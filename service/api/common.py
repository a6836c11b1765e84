"""What every HTTP route shares: the OpenAI-style error, the runtime, the bearer user, the
ready check and a bounded JSON body."""
from __future__ import annotations

import json

from fastapi import Request
from fastapi.responses import JSONResponse

from service.serving.auth import TokenError, User, verify_token


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
