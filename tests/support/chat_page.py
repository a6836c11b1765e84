"""What the browser tests of the chat page share: open it, send, wait for replies, read the
events stream and the page's outbox."""
from __future__ import annotations

import json
import time

FINISHED = "article[data-reply-id][data-finish-reason]"
FEEDBACK_KINDS = ("thumbs", "rating", "copy", "regenerate", "choose", "dwell")


def wait_until(fn, timeout: float = 20, what: str = "condition"):
    """Poll `fn` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def events(server, rdb, **match) -> list[dict]:
    return [f for _, f in rdb.xrange(f"{server.prefix}events") if all(f.get(k) == v for k, v in match.items())]


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
    wait_until(lambda: outbox(page) == {}, timeout, "the outbox to drain (every feedback acked)")


def pressed(locator) -> str | None:
    return locator.get_attribute("aria-pressed")


