"""The FastAPI application: routes, static chat page, lifespan."""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api import feedback, health, openai_api, sessions
from service.api.admin import router as admin_router
from service.api.common import ApiError, BodyLimit, body_limit, error_response, validation_error_response
from service.api.ops import install as install_ops
from service.api.ws import ChatConnection
from service.runtime import Runtime
from service.serving.chat import Overloaded
from service.serving.load import publish_forever, server_id

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def _lifespan(runtime: Runtime):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Model loading is slow and blocking: do it off the event loop so /healthz answers meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, runtime.start)
        watcher = asyncio.create_task(runtime.watcher.run(), name="adapter-watcher")
        load = asyncio.create_task(publish_forever(runtime.redis, runtime.keys, server_id(), runtime.metrics.load,
                                                   runtime.engine, runtime.chat, metrics=runtime.metrics),
                                   name="chat-load")
        yield
        watcher.cancel()
        load.cancel()
        await asyncio.gather(watcher, load, return_exceptions=True)
        await runtime.stop()
    return lifespan


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(title="rewardloop", lifespan=_lifespan(runtime))
    app.state.runtime = runtime
    app.add_middleware(BodyLimit, limit=body_limit(runtime.settings))  # 413 before a route parses a body
    for part in (health, openai_api, feedback, sessions):
        app.include_router(part.router)
    app.include_router(admin_router)
    install_ops(app, runtime)  # /ops page + API, reward/drift figures on /metrics
    from service.api.dev import router as dev_router  # sessions for developers, /api/opt-out
    app.include_router(dev_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.websocket("/ws/chat")
    async def ws_chat(ws: WebSocket):
        if not runtime.ready:
            await ws.accept()
            await ws.send_json({"type": "error", "code": "not_ready",
                                "message": "the model is still loading; reconnect in a few seconds"})
            await ws.close(1013, "model loading")  # 1013 = try again later
            return
        await ChatConnection(ws, runtime.chat, runtime.feedback, runtime.settings, runtime.secret).run()

    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as one JSON shape (service/api/common.py), with the status that says what to do."""
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.param, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return validation_error_response(exc.errors())   # OpenAI's 400, `param` naming the field

    @app.exception_handler(RedisError)
    async def redis_error(request: Request, exc: RedisError):
        log.warning("redis unavailable during %s: %s", request.url.path, exc)
        return error_response(503, "unavailable", "storage is unavailable for a moment; retry in a few seconds",
                              headers={"Retry-After": "2"})

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded):   # admission control: 503 busy / 429 this user
        return error_response(exc.status, exc.code, exc.message, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # a bug: uvicorn logs the traceback
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); it was logged")
