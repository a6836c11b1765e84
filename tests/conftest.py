"""Shared fixtures: a real Redis (embedded unless REWARDLOOP_REDIS_URL is set) and real
server processes running the tiny model."""
from __future__ import annotations

import os
import secrets

import pytest
import redis

from tests.helpers import MODELS, ServerProc, base_env, free_port


@pytest.fixture(scope="session")
def models_dir():
    """Convert/cache the models once per machine (the tiny one borrows the real tokenizer)."""
    from core.modeling import ensure_tiny
    ensure_tiny(MODELS)
    return MODELS


@pytest.fixture(scope="session")
def embedded_redis(tmp_path_factory):
    from core.embedded_redis import EmbeddedRedis
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-data"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(request):
    url = os.environ.get("REWARDLOOP_REDIS_URL")
    if url:
        return url
    return request.getfixturevalue("embedded_redis").url


@pytest.fixture
def prefix():
    """A fresh key prefix per test: tests never see each other's keys."""
    return f"t{secrets.token_hex(4)}:"


@pytest.fixture
def rdb(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def _factory(redis_url, tmp_path):
    started: list[ServerProc] = []

    def start(prefix: str | None = None, **env) -> ServerProc:
        prefix = prefix or f"t{secrets.token_hex(4)}:"
        data = tmp_path / f"data{len(started)}"
        data.mkdir()
        proc = ServerProc(base_env(redis_url, prefix, data, **env), free_port(),
                          tmp_path / f"server{len(started)}.log", prefix=prefix)
        started.append(proc)
        return proc.start()
    return start, started


@pytest.fixture
def server_factory(models_dir, redis_url, tmp_path):
    """Start servers with their own settings (env overrides); stopped after the test."""
    start, started = _factory(redis_url, tmp_path)
    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def server(models_dir, redis_url, tmp_path_factory):
    """One tiny-model server per test module (starting one costs seconds); tests use
    their own users and sessions, and `server.prefix` to find their keys."""
    start, started = _factory(redis_url, tmp_path_factory.mktemp("server"))
    yield start()
    for proc in started:
        proc.stop()
