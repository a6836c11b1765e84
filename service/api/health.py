"""Liveness, readiness and anonymous sessions."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.common import rt
from service.serving.auth import create_token, new_user_id

router = APIRouter()


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request):
    runtime = rt(request)
    checks = {"model": runtime.ready, "redis": False}
    if runtime.engine_failure:
        checks["engine_error"] = runtime.engine_failure
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
