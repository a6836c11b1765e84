"""Model output (and user text) holding HTML or script is inert in the operator's session
view in Chromium: no dialog, no element parsed from it, the text shown as text. (The chat page
itself: tests/service/api/test_chat_page.py::test_model_text_is_shown_as_text_never_as_html.)"""
from __future__ import annotations

import pytest

from tests.support.clients import Chat
from tests.support.processes import ADMIN

pytestmark = [pytest.mark.integration, pytest.mark.browser]
USER_XSS = '<img src=x onerror="alert(2)"><script>alert(3)</script>'


def test_model_and_user_html_is_inert_in_the_session_view(server_factory, xss_model, page):
    # xss_model answers its training prompts with tests.service.conftest.XSS_REPLY (markup first,
    # then Markdown); this prompt gets a variation of it that starts with the same markup
    srv = server_factory(REWARDLOOP_MODEL=str(xss_model), REWARDLOOP_TEMPERATURE=0, REWARDLOOP_MAX_NEW_TOKENS=40)
    chat = Chat(srv, srv.token("mallory"))
    reply = chat.ask(USER_XSS)
    text = reply["text"]
    assert "<script>" in text                                # the model really answers markup
    chat.close()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{srv.url}/ops?token={ADMIN}")               # sets the operator cookie
    page.goto(f"{srv.url}/admin/sessions/{chat.session_id}/view")
    page.wait_for_load_state("load")
    body = page.locator("body").inner_text()
    assert text in body and USER_XSS in body                # shown, as text
    assert page.locator("body script, body b, body img").count() == 0
    page.wait_for_timeout(500)                              # give an injected handler time to fire
    assert dialogs == [] and page.errors == []
    assert not [u for u in requests if u.endswith("/x")]    # no <img src=x> was ever requested
