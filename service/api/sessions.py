"""A user's conversations over HTTP, with their own token (`Authorization: Bearer`):

  GET    /api/sessions?q=&limit=   title, created, last activity, reply count; newest first
  GET    /api/sessions/{id}        every reply (tree, versions) and the user's feedback state
  PATCH  /api/sessions/{id}        {"title": "..."} renames
  DELETE /api/sessions/{id}        forgets the conversation (service/devtools/privacy.py)

Someone else's conversation, or one that does not exist, is 404 on every route: the answer
never tells whether an id belongs to another user.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from service.api.common import ApiError, bearer_user, json_body, rt
from service.serving.conversations import Conversations, TitleError

router = APIRouter()
MAX_LIMIT = 1000
DELETED = ("deleted: it is gone from your list, and from every later training set, export and replay "
           "(already trained adapters keep what they learned)")


def _conversations(request: Request) -> Conversations:
    """One reader per server process (a blocking client: the routes call it from a thread)."""
    runtime = rt(request)
    conv = getattr(runtime, "_conversations", None)
    if conv is None:
        from core.archive import Archive
        from core.history import History
        from core.redis_conn import connect
        history = History(connect(runtime.redis_url), runtime.keys, Archive(runtime.settings.archive_location))
        conv = runtime._conversations = Conversations(history)
    return conv


def _missing(session_id: str) -> ApiError:
    return ApiError(404, "unknown_session", f"you have no conversation {session_id!r}: see GET /api/sessions")


@router.get("/api/sessions")
async def list_sessions(request: Request, q: str | None = None, limit: int = 200):
    user = bearer_user(request)
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, "bad_value", f"limit={limit} must be in 1..{MAX_LIMIT}", "limit")
    if q is not None and len(q) > 200:
        raise ApiError(400, "bad_value", "q is longer than 200 characters: search for a shorter text", "q")
    conv = _conversations(request)
    return {"sessions": await asyncio.to_thread(conv.list, user.user_id, (q or "").strip() or None, limit)}


@router.get("/api/sessions/{session_id}")
async def get_session(request: Request, session_id: str):
    user = bearer_user(request)
    got = await asyncio.to_thread(_conversations(request).get, user.user_id, session_id)
    if got is None:
        raise _missing(session_id)
    return got


@router.patch("/api/sessions/{session_id}")
async def rename_session(request: Request, session_id: str):
    user = bearer_user(request)
    body = await json_body(request)
    try:
        done = await asyncio.to_thread(_conversations(request).rename, user.user_id, session_id, body.get("title"))
    except TitleError as exc:
        raise ApiError(400, "bad_value", str(exc), "title") from None
    if done is None:
        raise _missing(session_id)
    return done


@router.delete("/api/sessions/{session_id}")
async def delete_session(request: Request, session_id: str):
    user = bearer_user(request)
    conv = _conversations(request)
    if await asyncio.to_thread(conv.owned, user.user_id, session_id) is None:
        raise _missing(session_id)
    from service.devtools.privacy import forget_session
    report = await asyncio.to_thread(forget_session, conv.history.r, conv.history.k, session_id, user.user_id)
    return {"session_id": session_id, "deleted": True, "replies": report.replies, "message": DELETED}
