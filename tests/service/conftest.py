from __future__ import annotations

import asyncio
import os
import threading

import pytest

from tests.model_fixtures import train_parrot

CHROMIUM = "/usr/bin/chromium"
# What a model could say: raw HTML and script first (a short reply is all markup), then Markdown
# the chat page renders (heading, emphasis, a javascript: link, a list, a table, code).
XSS_REPLY = """<script>alert(1)</script> & <b>bold</b> <img src=x onerror="alert(2)">

## Plan

**Bold**, *soft* and [a link](javascript:alert(3)):

1. first
2. second

| a | b |
|---|---|
| 1 | 2 |

```python
def add(x, y):
    return x + y
```"""


@pytest.fixture(scope="session")
def xss_model(models_dir, tmp_path_factory):
    """A real model that answers every prompt with XSS_REPLY (HTML, script and Markdown)."""
    return train_parrot(models_dir, tmp_path_factory.mktemp("parrot") / "xss", XSS_REPLY)


@pytest.fixture(scope="module")
def loop():
    """An event loop running in a thread of its own: engine tests submit to it from the test's
    thread (asyncio.run_coroutine_threadsafe) while the engine thread emits into it."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)


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
