"""Feedback from the chat page in headless Chromium, against a real server and real Redis:
every button ends up as exactly one acknowledged event in the `events` stream, dwell counts
only the time a reply is actually seen, and the outbox carries feedback over drops and reloads."""
from __future__ import annotations

import time

import pytest

from core.keys import Keys
from tests.support.chat_page import (
    FINISHED,
    ask,
    events,
    feedback_events,
    open_chat,
    outbox,
    pressed,
    reply,
    send,
    wait_outbox_empty,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]


# ---------- 1. thumbs, rating, copy ----------
def test_thumbs_rating_and_copy_are_stored_in_order_and_acked(server, page, rdb):
    received = open_chat(page, server)
    rid = ask(page, "Hello there")
    art = reply(page, rid)
    up, down = art.get_by_test_id("thumb-up"), art.get_by_test_id("thumb-down")
    assert (pressed(up), pressed(down)) == ("false", "false")

    up.click()
    assert (pressed(up), pressed(down)) == ("true", "false")
    down.click()  # a changed mind: the pressed state moves, and it is a second event
    assert (pressed(up), pressed(down)) == ("false", "true")
    art.get_by_test_id("star-4").click()
    assert [pressed(art.get_by_test_id(f"star-{n}")) for n in range(1, 6)] == ["false"] * 3 + ["true", "false"]
    assert art.locator(".star.filled").count() == 4
    art.get_by_test_id("copy").click()

    wait_outbox_empty(page)
    evs = wait_for(lambda: (lambda e: e if len(e) >= 4 else None)(feedback_events(server, rdb, rid)),
                     what="four feedback events in Redis")
    assert [(e["kind"], e.get("value")) for e in evs] == [("thumbs", "1"), ("thumbs", "-1"), ("rating", "4"),
                                                          ("copy", None)]
    user_id = next(f for f in received if f["type"] == "ready")["user_id"]
    session_id = page.evaluate("rl.sessionId()")
    assert all(e["user_id"] == user_id and e["session_id"] == session_id for e in evs)
    assert all(e["adapter_version"] == art.get_by_test_id("version").text_content() for e in evs)
    # every stored feedback was acknowledged to the page, once, with its own feedback_id
    acked = [f["feedback_id"] for f in received if f["type"] == "ack"]
    ids = [e["feedback_id"] for e in evs]
    assert len(set(ids)) == 4 and sorted(acked) == sorted(ids)
    assert page.errors == []


# ---------- 2. regenerate ----------
def test_regenerate_adds_a_sibling_and_the_arrows_go_back(server, page, rdb):
    received = open_chat(page, server)
    old = ask(page, "tell me a joke")
    reply(page, old).get_by_test_id("regenerate").click()

    new_art = page.locator(f"{FINISHED}:not([data-reply-id='{old}'])")
    new_art.wait_for(timeout=60_000)
    new = new_art.get_attribute("data-reply-id")
    start = next(f for f in received if f["type"] == "reply_start" and f["reply_id"] == new)
    assert start["replaces"] == old                       # the server streamed it as a sibling of the old one
    # the new answer takes the old one's place on screen; the arrows lead back to it
    assert page.locator("article[data-reply-id]").evaluate_all("els => els.map(e => e.dataset.replyId)") == [new]
    assert new_art.get_by_test_id("sibling-count").text_content() == "2 / 2"
    assert page.evaluate("(id) => rl.source(id)", new) == rdb.hget(Keys(server.prefix).reply(new), "text")
    assert rdb.hget(Keys(server.prefix).reply(new), "replaces") == old
    [ev] = [e for e in feedback_events(server, rdb, old) if e["kind"] == "regenerate"]
    sid = ev["session_id"]
    assert sid == page.evaluate("rl.sessionId()")
    assert rdb.lrange(Keys(server.prefix).session(sid), 0, -1) == [new]

    new_art.get_by_test_id("prev").click()                # back to the first answer: it is the conversation again
    assert reply(page, old).get_by_test_id("sibling-count").text_content() == "1 / 2"
    assert page.locator("article[data-reply-id]").evaluate_all("els => els.map(e => e.dataset.replyId)") == [old]
    wait_for(lambda: rdb.lrange(Keys(server.prefix).session(sid), 0, -1) == [old], what="the branch selected")
    reply(page, old).get_by_test_id("next").click()
    wait_for(lambda: rdb.lrange(Keys(server.prefix).session(sid), 0, -1) == [new], what="the branch selected back")
    wait_outbox_empty(page)
    assert page.errors == []


# ---------- 3. compare two candidates ----------
def test_compare_then_choose_the_second_candidate(server, page, rdb):
    received = open_chat(page, server)
    page.get_by_test_id("compare").check()
    send(page, "pick one")
    pair = page.locator(".row.pair")
    page.wait_for_function("document.querySelectorAll('.row.pair article[data-finish-reason]').length === 2",
                           timeout=60_000)
    first, second = pair.locator("article").evaluate_all("els => els.map(e => e.dataset.replyId)")
    start = next(f for f in received if f["type"] == "reply_start")
    assert start["candidates"] == [first, second]         # page columns follow the server's order
    sid = page.evaluate("rl.sessionId()")
    history = Keys(server.prefix).session(sid)
    assert rdb.lrange(history, 0, -1) == [first]

    reply(page, second).get_by_test_id("choose").click()
    assert pressed(reply(page, second).get_by_test_id("choose")) == "true"
    assert pressed(reply(page, first).get_by_test_id("choose")) == "false"
    assert "chosen" in reply(page, second).get_attribute("class")
    assert "dimmed" in reply(page, first).get_attribute("class")

    wait_outbox_empty(page)
    [ev] = [e for e in feedback_events(server, rdb, second) if e["kind"] == "choose"]
    assert ev["value"] == first and ev["session_id"] == sid
    assert rdb.lrange(history, 0, -1) == [second]           # the chosen one is the conversation now
    assert page.errors == []


# ---------- 4. dwell ----------
def _dwell_events(server, rdb, rid):
    return [e for e in feedback_events(server, rdb, rid) if e["kind"] == "dwell"]


def test_dwell_stops_counting_when_the_reply_scrolls_out_of_view(server, page, rdb):
    open_chat(page, server)
    rid = ask(page, "something to read")
    time.sleep(1.5)                                           # in view: counts
    page.evaluate("""() => {
        const t = document.querySelector('#transcript');
        const spacer = document.createElement('div');
        spacer.style.minHeight = '6000px';  // later content, far taller than the viewport
        t.append(spacer);
        t.scrollTop = t.scrollHeight;
    }""")
    box = reply(page, rid).bounding_box()
    assert box is None or box["y"] + box["height"] < 0        # really scrolled away
    time.sleep(1.5)                                           # out of view: must not count
    visible = page.evaluate(f"rlDwell({rid!r})")
    assert 1000 <= visible <= 2600, visible
    time.sleep(0.3)
    assert page.evaluate(f"rlDwell({rid!r})") == visible     # frozen while out of view
    assert _dwell_events(server, rdb, rid) == []            # nothing reported before a flush

    page.evaluate("rlFlushDwell()")
    wait_outbox_empty(page)
    [ev] = wait_for(lambda: _dwell_events(server, rdb, rid), what="the dwell event")
    assert ev["value"] == str(visible)

    # back in view: the clock runs again, and the next flush reports only the increment
    page.evaluate("document.querySelector('#transcript').scrollTop = 0")
    time.sleep(0.6)
    page.evaluate("rlFlushDwell()")
    wait_outbox_empty(page)
    evs = wait_for(lambda: (lambda e: e if len(e) == 2 else None)(_dwell_events(server, rdb, rid)),
                     what="a second dwell event")
    assert 200 <= float(evs[1]["value"]) <= 2000
    assert page.errors == []


HIDE = """() => {
    Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
    Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
    document.dispatchEvent(new Event('visibilitychange'));
}"""
SHOW = """() => {
    delete document.visibilityState; delete document.hidden;
    document.dispatchEvent(new Event('visibilitychange'));
}"""


def test_dwell_stops_counting_while_the_tab_is_hidden(server, page, rdb):
    # Headless Chromium keeps a page 'visible' behind another tab or in a minimized window (checked:
    # bring_to_front and Browser.setWindowBounds minimized both leave it visible), so the page is
    # told it is hidden the way a browser tells it: visibilityState plus a visibilitychange event.
    open_chat(page, server)
    rid = ask(page, "another thing to read")
    time.sleep(1.5)
    page.evaluate(HIDE)
    assert page.evaluate("document.visibilityState") == "hidden"
    # going hidden reports what was seen so far (the tab may never come back)
    [ev] = wait_for(lambda: _dwell_events(server, rdb, rid), what="the dwell event sent on hide")
    time.sleep(1.5)                                           # hidden: must not count
    visible = page.evaluate(f"rlDwell({rid!r})")
    assert 1000 <= visible <= 2600, visible
    assert ev["value"] == str(visible)
    page.evaluate("rlFlushDwell()")                          # nothing new was seen: nothing sent
    wait_outbox_empty(page)
    assert len(_dwell_events(server, rdb, rid)) == 1

    page.evaluate(SHOW)
    time.sleep(0.5)
    assert page.evaluate(f"rlDwell({rid!r})") >= visible + 300   # visible again: counting resumed
    assert page.errors == []


# ---------- 5. outbox ----------
CLOSE_AND_THUMB = """(replyId) => {
    rl.socket.close();   // the connection drops; the click lands before any reconnect
    document.querySelector(`article[data-reply-id="${replyId}"] [data-testid=thumb-up]`).click();
    return rl.outbox();
}"""


def test_feedback_given_while_disconnected_is_delivered_once_after_reconnect(server, page, rdb):
    open_chat(page, server)
    rid = ask(page, "hello")
    held = page.evaluate(CLOSE_AND_THUMB, rid)
    [(fid, frame)] = held.items()
    assert frame["kind"] == "thumbs" and frame["value"] == 1 and frame["reply_id"] == rid

    page.wait_for_selector("[data-testid=status][data-state=connected]", timeout=30_000)
    wait_outbox_empty(page)
    [ev] = wait_for(lambda: events(server, rdb, feedback_id=fid), what="the held feedback in Redis")
    assert ev["kind"] == "thumbs" and ev["value"] == "1" and ev["reply_id"] == rid
    time.sleep(0.3)
    assert len(events(server, rdb, feedback_id=fid)) == 1
    assert pressed(reply(page, rid).get_by_test_id("thumb-up")) == "true"
    assert page.errors == []


def test_a_reload_with_a_full_outbox_sends_it_once(server, page, rdb):
    # Route the page's websocket through Playwright: pass-through, or (blocked) a socket that opens
    # but never answers hello, so feedback stays in the outbox for as long as the test needs.
    mode = {"blocked": False}
    page.route_web_socket("**/ws/chat", lambda ws: None if mode["blocked"] else ws.connect_to_server())
    open_chat(page, server)
    rid = ask(page, "hello")

    mode["blocked"] = True
    page.evaluate("rl.socket.close()")
    page.wait_for_function("rl.socket && rl.socket.readyState === WebSocket.OPEN", timeout=20_000)
    reply(page, rid).get_by_test_id("thumb-down").click()
    [(fid, frame)] = outbox(page).items()
    assert frame["kind"] == "thumbs" and frame["value"] == -1
    time.sleep(0.5)
    assert events(server, rdb, feedback_id=fid) == []       # not delivered: the outbox holds it

    mode["blocked"] = False
    page.reload()
    page.wait_for_selector("[data-testid=status][data-state=connected]", timeout=30_000)
    wait_outbox_empty(page)
    [ev] = wait_for(lambda: events(server, rdb, feedback_id=fid), what="the reloaded outbox in Redis")
    assert ev["kind"] == "thumbs" and ev["value"] == "-1" and ev["reply_id"] == rid

    # an ack lost on the way: the same frame back in the outbox is re-sent, and stored only once
    page.evaluate("(f) => localStorage.setItem('rl_outbox', JSON.stringify({[f.feedback_id]: f}))", frame)
    page.reload()
    page.wait_for_selector("[data-testid=status][data-state=connected]", timeout=30_000)
    wait_outbox_empty(page)
    assert len(events(server, rdb, feedback_id=fid)) == 1
    assert page.errors == []
