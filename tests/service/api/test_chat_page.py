"""The chat page in headless Chromium against a real server: a streamed reply, and model text
rendered as Markdown with highlighted code while everything the model says stays inert."""
from __future__ import annotations

import pytest

from core.keys import Keys
from tests.support.chat_page import XSS_REPLY

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def send(page, text: str):
    page.get_by_test_id("input").fill(text)
    page.get_by_test_id("input").press("Enter")


def last_reply(page):
    page.wait_for_selector("article[data-reply-id][data-finish-reason]", timeout=60_000)
    return page.locator("article[data-reply-id][data-finish-reason]").last


def test_type_send_and_see_the_streamed_reply(server, page, rdb):
    page.goto(server.url + "/")
    page.wait_for_selector("[data-testid=status][data-state=connected]", timeout=30_000)
    send(page, "Hello there")
    reply = last_reply(page)
    reply_id = reply.get_attribute("data-reply-id")
    source = page.evaluate("(id) => rl.source(id)", reply_id)   # the Markdown as streamed
    assert source and rdb.hget(Keys(server.prefix).reply(reply_id), "text") == source
    assert reply.get_by_test_id("reply-text").text_content().strip()
    assert reply.get_by_test_id("version").text_content().strip().endswith("base")
    assert page.errors == []


def test_model_text_renders_as_markdown_and_stays_inert(server_factory, xss_model, browser):
    srv = server_factory(REWARDLOOP_MODEL=str(xss_model), REWARDLOOP_TEMPERATURE=0, REWARDLOOP_MAX_NEW_TOKENS=160)
    ctx = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = ctx.new_page()
    errors, dialogs, requests = [], [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(srv.url + "/")
    page.wait_for_selector("[data-testid=status][data-state=connected]", timeout=30_000)
    send(page, "show me")
    reply = last_reply(page)
    rid = reply.get_attribute("data-reply-id")
    assert page.evaluate("(id) => rl.source(id)", rid) == XSS_REPLY
    body = reply.get_by_test_id("reply-text")
    # Markdown: heading, emphasis, list, table, highlighted code with a copy button
    assert body.locator("h2").text_content() == "Plan" and body.locator("strong").text_content() == "Bold"
    assert body.locator("ol > li").all_text_contents() == ["first", "second"]
    assert body.locator("table th").all_text_contents() == ["a", "b"] and body.locator("table td").count() == 2
    assert body.locator("pre code.hljs .hljs-keyword").first.text_content() == "def"
    # what may scroll sideways is reachable by keyboard (axe: scrollable-region-focusable)
    assert body.locator("pre > code").first.get_attribute("tabindex") == "0"
    assert body.locator("table").first.get_attribute("tabindex") == "0"
    # inert: raw HTML shown as text, no element, no javascript: link, nothing requested, no dialog
    text = body.text_content()
    assert '<script>alert(1)</script> & <b>bold</b> <img src=x onerror="alert(2)">' in text
    assert body.locator("script, b, img, iframe").count() == 0
    assert body.locator("a").count() == 0 and "a link" in text
    page.wait_for_timeout(300)   # an injected handler would have fired by now
    assert dialogs == [] and not [u for u in requests if u.endswith("/x")]

    body.locator(".copy-code").click()
    page.wait_for_function("() => navigator.clipboard.readText().then(t => t.startsWith('def add'))", timeout=5_000)
    assert page.evaluate("navigator.clipboard.readText()") == "def add(x, y):\n    return x + y"
    reply.get_by_test_id("copy").click()                  # the reply's Copy: its Markdown source
    page.wait_for_function("(s) => navigator.clipboard.readText().then(t => t === s)", arg=XSS_REPLY, timeout=5_000)
    assert errors == []
    ctx.close()
