"""The operator page `/ops` and its JSON API, plus the reward/drift figures on `/metrics`.

Auth: the operator token (REWARDLOOP_ADMIN_TOKEN; `rewardloop up` creates one) as
`Authorization: Bearer` for the API: the page takes it from `/ops?token=...` into the tab's
session storage and drops it from the address bar. `/ops?token=...` also sets the `rl_admin`
cookie (HttpOnly, SameSite=Strict) that the session views linked from the page use.
"""
from __future__ import annotations

import asyncio
import hmac
import time
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse

from core.redis_conn import connect
from service.api.admin import require_operator
from service.api.common import ApiError, rt
from service.api.ops_metrics import OpsCollector
from worker.ops.state import build_state
from worker.ops.store import OpsStore

router = APIRouter()
STATIC = Path(__file__).parent.parent / "static"
COOKIE_MAX_AGE_S = 12 * 3600


class _Ops:
    """Per-app Redis clients for the ops reads (sync redis-py: the API uses it from worker
    threads; the collector runs inside /metrics, so its client gives up fast)."""

    def __init__(self, runtime):
        self.runtime = runtime
        self._stores: dict[float, OpsStore] = {}
        self.collector_registered = False

    def _store(self, timeout_s: float) -> OpsStore:
        if timeout_s not in self._stores:
            s = self.runtime.settings
            client = connect(self.runtime.redis_url, timeout_s=timeout_s)
            self._stores[timeout_s] = OpsStore(client, self.runtime.keys, s.ops_minute_retention_s,
                                               s.ops_hour_retention_s)
        return self._stores[timeout_s]

    @property
    def store(self) -> OpsStore:
        return self._store(5.0)

    def ensure_collector(self) -> None:
        # the server's metrics registry only exists once the model loaded (runtime.start)
        if not self.collector_registered and self.runtime.metrics is not None:
            self.runtime.metrics.registry.register(OpsCollector(self._store(1.0)))
            self.collector_registered = True


class _CollectorOnFirstScrape:
    """Pure ASGI middleware (streams and websockets pass untouched): registers the ops
    collector on the first /metrics request."""

    def __init__(self, app, ops: _Ops):
        self.app, self.ops = app, ops

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path") == "/metrics":
            self.ops.ensure_collector()
        await self.app(scope, receive, send)


def install(app: FastAPI, runtime) -> None:
    """Add /ops and its API to the app, and the ops collector to the server's /metrics."""
    app.state.ops = _Ops(runtime)
    app.include_router(router)
    app.add_middleware(_CollectorOnFirstScrape, ops=app.state.ops)


def _ops(request: Request) -> _Ops:
    return request.app.state.ops


@router.get("/ops", include_in_schema=False)
async def ops_page(request: Request, token: str | None = None):
    """The page itself holds no data: it is served to everyone, with the status its API calls
    will meet (200 with a good ?token= or cookie, 401 without, 403 with no operator token set).
    The page keeps a ?token= in the tab's session storage and drops it from the address bar;
    a good one also sets the rl_admin cookie (HttpOnly) for the session views it links to."""
    page = (STATIC / "ops.html").read_text(encoding="utf-8")
    headers = {"Cache-Control": "no-store"}
    expected = rt(request).settings.admin_token
    if token is not None:
        if expected and hmac.compare_digest(token.encode(), expected.encode()):
            resp = HTMLResponse(page, headers=headers)
            resp.set_cookie("rl_admin", token, max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict", path="/")
            return resp
        return HTMLResponse(page, status_code=403 if not expected else 401, headers=headers)
    try:
        require_operator(request)
    except ApiError as exc:
        return HTMLResponse(page, status_code=exc.status, headers=headers)
    return HTMLResponse(page, headers=headers)


@router.get("/ops/api/state")
async def ops_state(request: Request, minutes: int = 60):
    """Everything the page draws, for the last `minutes` (hourly buckets beyond a day)."""
    require_operator(request)
    if not 1 <= minutes <= 90 * 24 * 60:
        raise ApiError(400, "bad_request", f"minutes={minutes} must be in 1..{90 * 24 * 60}")
    return await asyncio.to_thread(build_state, _ops(request).store, minutes, time.time())
