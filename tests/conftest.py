"""Shared fixtures: a real Redis (embedded unless REWARDLOOP_REDIS_URL is set) and real
server processes running the tiny model."""
from __future__ import annotations

import os
import secrets

import pytest
import redis

from tests.support.chat_page import CHROMIUM, XSS_REPLY
from tests.support.models import train_parrot
from tests.support.processes import MODELS, server_starter


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


@pytest.fixture
def server_factory(models_dir, redis_url, tmp_path):
    """Start servers with their own settings (env overrides); stopped after the test."""
    start, started = server_starter(redis_url, tmp_path)
    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def server(models_dir, redis_url, tmp_path_factory):
    """One tiny-model server per test module (starting one costs seconds); tests use
    their own users and sessions, and `server.prefix` to find their keys."""
    start, started = server_starter(redis_url, tmp_path_factory.mktemp("server"))
    yield start()
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def xss_model(models_dir, tmp_path_factory):
    """A real model that answers every prompt with an HTML/JS string."""
    return train_parrot(models_dir, tmp_path_factory.mktemp("parrot") / "xss", XSS_REPLY)


@pytest.fixture(scope="module")
def browser():
    # module scope: Playwright's sync API keeps an event loop running in this thread while it is
    # open, so a browser held for the whole session breaks every later asyncio.run() (and a
    # second sync_playwright) in other modules
    if not os.path.exists(CHROMIUM):
        pytest.skip("no /usr/bin/chromium: `make browser-deps` (or apt-get install chromium) enables browser tests")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context()
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    yield pg
    ctx.close()
