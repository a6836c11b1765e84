"""Developer HTTP endpoints: logged sessions for operators (the same JSON as
`rewardloop sessions list|show --json`, and a plain HTML view the /ops page can link to), and
POST /api/opt-out for users."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from service.api.admin import require_operator
from service.api.common import ApiError, bearer_user, rt

router = APIRouter()


def _log(request: Request):
    from core.archive import Archive
    from core.redis_conn import connect
    from service.devtools.sessions import SessionLog
    runtime = rt(request)
    log = getattr(runtime, "_dev_session_log", None)
    if log is None:  # one sync client per server process, used from worker threads
        log = SessionLog(connect(runtime.redis_url), runtime.keys, Archive(runtime.settings.archive_location))
        runtime._dev_session_log = log
    return log


def _float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        if name == "since":
            from service.devtools.sessions import parse_time
            return parse_time(raw)
        return float(raw)
    except ValueError as exc:
        raise ApiError(400, "bad_value", f"query parameter {name}={raw!r}: {exc}") from None


@router.get("/admin/sessions")
async def list_sessions(request: Request):
    """Query: user, since (epoch seconds, 30m/2h/7d, or ISO), adapter, min_reward, limit."""
    require_operator(request)
    from service.devtools.sessions import SessionFilter
    q = request.query_params
    try:
        flt = SessionFilter(user=q.get("user") or None, since=_float(request, "since"),
                            adapter=q.get("adapter") or None, min_reward=_float(request, "min_reward"),
                            limit=int(q.get("limit") or 50))
    except ValueError as exc:
        raise ApiError(400, "bad_value", str(exc)) from None
    return {"sessions": await asyncio.to_thread(_log(request).list, flt)}


async def _detail(request: Request, session_id: str) -> dict:
    require_operator(request)
    detail = await asyncio.to_thread(_log(request).detail, session_id)
    if detail is None:
        raise ApiError(404, "unknown_session", f"no session {session_id!r}: see GET /admin/sessions")
    return detail


@router.get("/admin/sessions/{session_id}")
async def show_session(request: Request, session_id: str):
    return await _detail(request, session_id)


@router.get("/admin/sessions/{session_id}/view")
async def view_session(request: Request, session_id: str):
    from service.devtools.session_html import session_page
    return HTMLResponse(session_page(await _detail(request, session_id)), headers={"Cache-Control": "no-store"})


@router.post("/api/opt-out")
async def opt_out(request: Request):
    """The bearer user's data is never used for learning or export from now on (still served)."""
    user = bearer_user(request)
    from service.devtools.privacy import opt_out_async
    runtime = rt(request)
    if runtime.redis is None:
        raise ApiError(503, "not_ready", "the server is still starting; retry in a few seconds")
    await opt_out_async(runtime.redis, runtime.keys, user.user_id)
    return {"user_id": user.user_id, "opt_out": True}
