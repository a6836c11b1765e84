"""What each `rewardloop` subcommand does (argument parsing lives in cli.py)."""
from __future__ import annotations

import contextlib
import logging
import platform
import sys
import time

from core.settings import CommonSettings, ServerSettings, Settings
from service.cli.up import add_up_flags, cmd_up  # noqa: F401 (add_up_flags: main.py's parser)

log = logging.getLogger("rewardloop")


@contextlib.contextmanager
def redis_for(settings: CommonSettings):
    """Yield a Redis URL: REWARDLOOP_REDIS_URL, or an embedded server stopped on exit."""
    if settings.redis_url:
        yield settings.redis_url
        return
    from core.embedded_redis import EmbeddedRedis, EmbeddedRedisError
    server = EmbeddedRedis(settings.data_dir)
    try:
        url = server.start()
    except EmbeddedRedisError as exc:
        sys.exit(f"rewardloop: {exc}")
    try:
        yield url
    finally:
        server.stop()


def cmd_serve(args, settings: ServerSettings) -> int:
    import uvicorn

    from service.app import create_app
    from service.runtime import RedisUnavailable, Runtime, check_redis
    with redis_for(settings) as url:
        try:
            check_redis(url)
        except RedisUnavailable as exc:
            print(f"rewardloop serve: {exc}", file=sys.stderr)
            return 2
        runtime = Runtime.create(settings, url)
        app = create_app(runtime)
        # Frames are small JSON (a token, an ack): compressing each costs more CPU than it saves.
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", ws_max_size=1 << 20,
                    ws_per_message_deflate=False)
    if runtime.engine_failure:  # drained after the engine died: non-zero, so a supervisor restarts us
        print(f"rewardloop serve: the engine died ({runtime.engine_failure}); exiting 1", file=sys.stderr)
        return 1
    return 0


def cmd_token(args, settings: ServerSettings) -> int:
    from service.runtime import ensure_secret
    from service.serving.auth import create_token
    print(create_token(ensure_secret(settings), args.user, args.ttl or settings.token_ttl_s, opt_out=args.opt_out))
    return 0


def cmd_doctor(args, settings: Settings) -> int:
    ok = True

    def row(name: str, value: str, good: bool = True):
        nonlocal ok
        ok &= good
        print(f"{'ok ' if good else 'BAD'}  {name:<10} {value}")

    row("python", f"{platform.python_version()} ({sys.executable})")
    try:
        import torch

        from core.modeling import pick_device
        dev, dtype = pick_device(settings.device)
        row("torch", f"{torch.__version__}, device {dev} {str(dtype).replace('torch.', '')}, "
            f"cuda available: {torch.cuda.is_available()}")
    except Exception as exc:  # doctor reports every failure instead of stopping at the first
        row("torch", f"{exc}", False)
    try:
        from core.modeling import load_model, resolve_model_path
        path, model_id = resolve_model_path(settings.model, settings.models_dir)
        row("model", f"{settings.model} -> {path} ({model_id})")
        if not args.no_load:
            t = time.time()
            lm = load_model(settings.model, settings.models_dir, settings.device)
            n = sum(p.numel() for p in lm.model.parameters())
            row("loads", f"yes, {n / 1e6:.1f}M parameters in {time.time() - t:.1f}s")
    except Exception as exc:
        row("model", f"{settings.model}: {exc}", False)
    from service.runtime import RedisUnavailable, check_redis
    if settings.redis_url:
        try:
            check_redis(settings.redis_url)
            row("redis", f"{settings.redis_url} answers")
        except RedisUnavailable as exc:
            row("redis", str(exc), False)
    else:
        import tempfile

        from core.embedded_redis import EmbeddedRedis, EmbeddedRedisError, redis_server_binary
        try:
            with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(tmp) as probe:
                check_redis(probe.url)
            row("redis", f"REWARDLOOP_REDIS_URL unset: embedded {redis_server_binary()} starts and answers "
                f"(its data will live in {settings.data_dir}/redis)")
        except (EmbeddedRedisError, RedisUnavailable) as exc:
            row("redis", str(exc), False)
    row("data dir", str(settings.data_dir.resolve()))
    return 0 if ok else 1


COMMANDS = {"up": cmd_up, "serve": cmd_serve, "token": cmd_token, "doctor": cmd_doctor}
