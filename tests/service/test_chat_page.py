"""The chat page in headless Chromium against a real server."""
from __future__ import annotations

import pytest

from tests.service.conftest import XSS_REPLY

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
    text = reply.get_by_test_id("reply-text").text_content()
    reply_id = reply.get_attribute("data-reply-id")
    assert text and rdb.hget(f"{server.prefix}reply:{reply_id}", "text") == text
    assert reply.get_by_test_id("version").text_content().strip().endswith("base")
    assert page.errors == []


def test_model_text_is_shown_as_text_never_as_html(server_factory, xss_model, page):
    srv = server_factory(REWARDLOOP_MODEL=str(xss_model), REWARDLOOP_TEMPERATURE=0, REWARDLOOP_MAX_NEW_TOKENS=40)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(srv.url + "/")
    page.wait_for_selector("[data-testid=status][data-state=connected]", timeout=30_000)
    send(page, "show me")
    reply = last_reply(page)
    assert reply.get_by_test_id("reply-text").text_content() == XSS_REPLY
    assert reply.locator("script, b").count() == 0   # nothing was parsed as markup
    assert dialogs == []
