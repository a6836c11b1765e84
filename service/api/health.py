"""Liveness, readiness and anonymous sessions."""
from __future__ import annotations

import math

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.common import ApiError, rt
from service.serving.auth import create_token, new_user_id
from service.serving.ratelimit import KeyedBuckets

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
    scoring = getattr(getattr(runtime.chat, "safety", None), "base", None)
    if scoring is not None:   # calibrating stalls the engine thread: not ready until it is done (or failed)
        checks["reply_quality"] = scoring.stats()
        ok = ok and scoring.settled
    return JSONResponse({"status": "ready" if ok else "not_ready", **checks}, status_code=200 if ok else 503)


@router.post("/api/session")
async def anonymous_session(request: Request):
    runtime = rt(request)
    if not runtime.settings.anonymous:
        raise ApiError(403, "anonymous_disabled", "anonymous sessions are off on this server "
                       "(REWARDLOOP_ANONYMOUS=0): sign in through this deployment's login to get a token")
    buckets = getattr(runtime, "_anonymous_buckets", None)
    if buckets is None:   # per client address; per server process
        per_minute = runtime.settings.anonymous_per_minute
        buckets = runtime._anonymous_buckets = KeyedBuckets(per_minute / 60.0, per_minute)
    wait = buckets.take(request.client.host if request.client else "unknown")
    if wait:
        raise ApiError(429, "rate_limited", f"too many anonymous sessions from this address: retry in {wait:.0f} s "
                       "(REWARDLOOP_ANONYMOUS_PER_MINUTE)", headers={"Retry-After": str(max(1, math.ceil(wait)))})
    uid = new_user_id()
    return {"token": create_token(runtime.secret, uid, runtime.settings.token_ttl_s), "user_id": uid}
