"""What every HTTP route shares: the OpenAI-style error, the runtime, the bearer user, the
ready check, a bounded JSON body, and the body-size limit as ASGI middleware."""
from __future__ import annotations

import json

from fastapi import Request
from fastapi.responses import JSONResponse

from service.serving.auth import TokenError, User, verify_token

# OpenAI's error types by status: the official client maps the status to its exception
# class (BadRequestError, AuthenticationError, PermissionDeniedError, NotFoundError,
# ConflictError, UnprocessableEntityError, RateLimitError, InternalServerError).
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               429: "rate_limit_error"}


class ApiError(Exception):
    """Rendered as an OpenAI-style JSON error body with this status; `param` names the
    request field at fault, `headers` (e.g. Retry-After) go on the response."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers


def error_response(status: int, code: str, message: str, param: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    kind = "server_error" if status >= 500 else ERROR_TYPES.get(status, "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


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
        raise ApiError(503, "not_ready", "the model is still loading; retry in a few seconds (see /readyz)",
                       headers={"Retry-After": "5"})
    return runtime


def body_limit(settings) -> int:
    return settings.max_message_bytes * 8  # whole conversations come in one request


async def json_body(request: Request) -> dict:
    raw = await request.body()
    limit = body_limit(rt(request).settings)
    if len(raw) > limit:
        raise ApiError(413, "too_large", f"request body is {len(raw)} bytes; the limit is {limit}")
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "bad_json", "request body is not valid JSON") from None
    except RecursionError:   # '[[[[...' thousands deep: a 400, not a 500
        raise ApiError(400, "bad_json", "request body nests too deeply: send a flat JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "request body must be a JSON object")
    return body


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes under `prefix` gets 413 before any
    route parses it (routes with pydantic bodies never see the raw bytes). Content-Length is
    checked first; otherwise the body is read here (the route would buffer it anyway) and
    handed on."""

    def __init__(self, app, limit: int, prefix: str = "/v1/"):
        self.app, self.limit, self.prefix = app, limit, prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(f"{int(length)} bytes", scope, receive, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":   # the client left: let the app see it
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await self._refuse(f"over {self.limit} bytes", scope, receive, send)
            if not message.get("more_body"):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _refuse(self, size: str, scope, receive, send):
        await error_response(413, "too_large", f"request body is {size}; the limit is {self.limit} bytes "
                             "(REWARDLOOP_MAX_MESSAGE_BYTES x 8)")(scope, receive, send)


def _replay(messages: list[dict], receive):
    async def replayed():
        return messages.pop(0) if messages else await receive()
    return replayed


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "json-or-python", "lax-or-strict", "tagged-union"}


def _param(loc: tuple) -> str | None:
    """('body', 'messages', 0, 'content', 'str') -> 'messages[0].content' (union member tags
    such as 'str' or 'list[...]' name a type, not a field: dropped)."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS or not str(part).isidentifier():
            break
        else:
            out += ("." if out else "") + str(part)
    return out or None


def validation_error_response(errors: list[dict]) -> JSONResponse:
    """FastAPI's RequestValidationError as OpenAI's 400, naming the first field at fault."""
    first = errors[0] if errors else {"type": "missing", "loc": ("body",), "msg": "invalid request"}
    kind, param = first.get("type", ""), _param(tuple(first.get("loc", ())))
    if kind == "json_invalid":
        return error_response(400, "bad_json", "request body is not valid JSON")
    if kind == "extra_forbidden":
        return error_response(400, "unknown_parameter", f"unknown parameter {param!r}: the fields this server "
                              "reads are listed in /docs (OpenAI fields it does not implement are refused by name)",
                              param)
    if param is None:
        message = ("request body is required: a JSON object" if kind == "missing"
                   else f"request body must be a JSON object ({first.get('msg')})")
        return error_response(400, "bad_json", message)
    others = {_param(tuple(e.get("loc", ()))) for e in errors} - {param}   # union members share a param
    more = f" (and {len(others)} more field{'s' if len(others) > 1 else ''}: see /docs)" if others else ""
    return error_response(400, "missing_field" if kind == "missing" else "bad_value",
                          f"{param}: {first.get('msg')}{more}", param)
