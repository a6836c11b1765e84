"""Operator endpoints (REWARDLOOP_ADMIN_TOKEN): adapter status, promote, rollback, and
Prometheus /metrics."""
from __future__ import annotations

import asyncio
import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.common import ApiError, json_body, rt

router = APIRouter()


def require_operator(request: Request) -> str:
    """The operator token, from `Authorization: Bearer` or the `rl_admin` cookie (for /ops)."""
    expected = rt(request).settings.admin_token
    if not expected:
        raise ApiError(403, "admin_disabled", "admin endpoints are off: set REWARDLOOP_ADMIN_TOKEN on the server")
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get("rl_admin", "")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "operator token required: Authorization: Bearer $REWARDLOOP_ADMIN_TOKEN")
    return "operator"


def _registry(request: Request):
    return rt(request).registry()  # one blocking pool per process, not one per request


@router.get("/metrics")
async def metrics(request: Request):
    runtime = rt(request)
    # rendering reads Redis (ops collector) with a blocking client: keep it off the event loop
    body = await asyncio.to_thread(runtime.metrics.render) if runtime.metrics else b""
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/admin/adapters")
async def adapters_status(request: Request):
    require_operator(request)
    runtime = rt(request)
    registry = _registry(request)
    state = await asyncio.to_thread(registry.state)
    return {"registry": state, "server": runtime.watcher.status() if runtime.watcher else None,
            "rerank": runtime.chat.rerank_status() if getattr(runtime, "chat", None) else None,
            "history": await asyncio.to_thread(registry.history, 50)}


async def _move(request: Request, event: str, version: str | None):
    who = require_operator(request)
    body = await json_body(request) if (await request.body()) else {}
    from core.registry import RegistryError
    registry = _registry(request)
    try:
        notice = await asyncio.to_thread(registry.move, event, version, body.get("by") or who,
                                         body.get("reason") or f"{event} via admin API")
    except RegistryError as exc:
        raise ApiError(400, "bad_version", str(exc)) from None
    if rt(request).watcher:
        await rt(request).watcher.reconcile()  # this server applies it now; others on the notice
    return notice


@router.post("/admin/adapters/{version}/promote")
async def promote(request: Request, version: str):
    return await _move(request, "promote", version)


@router.post("/admin/adapters/rollback")
async def rollback(request: Request):
    return await _move(request, "rollback", None)


@router.post("/admin/adapters/{version}/rollback")
async def rollback_to(request: Request, version: str):
    return await _move(request, "rollback", version)
