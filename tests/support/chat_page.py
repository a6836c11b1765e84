"""What the browser tests of the chat page share: open it, send, wait for replies, read the
events stream and the page's outbox; the XSS parrot's reply (tests/conftest.py xss_model)."""
from __future__ import annotations

import json

from tests.support.redis_view import events
from tests.support.waiting import wait_for

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
FINISHED = "article[data-reply-id][data-finish-reason]"
FEEDBACK_KINDS = ("thumbs", "rating", "copy", "regenerate", "choose", "dwell")


def feedback_events(server, rdb, reply_id: str) -> list[dict]:
    return [e for e in events(server, rdb, reply_id=reply_id) if e["kind"] in FEEDBACK_KINDS]


def open_chat(page, server) -> list[dict]:
    """Load the page, wait for `ready`; returns the (growing) list of frames the page received."""
    received: list[dict] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda p: received.append(json.loads(p))))
    page.goto(server.url + "/")
    page.wait_for_selector("[data-testid=status][data-state=connected]", timeout=30_000)
    return received


def send(page, text: str) -> None:
    page.get_by_test_id("input").fill(text)
    page.get_by_test_id("input").press("Enter")


def ask(page, text: str) -> str:
    """Send a message; return the reply_id of the new finished reply."""
    before = page.locator(FINISHED).count()
    send(page, text)
    page.wait_for_function(f"document.querySelectorAll({FINISHED!r}).length > {before}", timeout=60_000)
    return page.locator(FINISHED).last.get_attribute("data-reply-id")


def reply(page, reply_id: str):
    return page.locator(f"article[data-reply-id='{reply_id}']")


def outbox(page) -> dict:
    return page.evaluate("rl.outbox()")


def wait_outbox_empty(page, timeout: float = 20) -> None:
    wait_for(lambda: outbox(page) == {}, timeout, "the outbox to drain (every feedback acked)")


def pressed(locator) -> str | None:
    return locator.get_attribute("aria-pressed")


