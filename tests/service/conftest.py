from __future__ import annotations

import asyncio
import threading

import pytest

from tests.support.chat_page import XSS_REPLY  # noqa: F401 (importable here for a while; the fixtures are in tests/conftest.py)


@pytest.fixture(scope="module")
def loop():
    """An event loop running in a thread of its own: engine tests submit to it from the test's
    thread (asyncio.run_coroutine_threadsafe) while the engine thread emits into it."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
