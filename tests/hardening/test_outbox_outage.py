"""The chat page across a Redis outage, in headless Chromium: feedback clicked while Redis is
down is refused as `unavailable`, stays in the page's outbox, is resent by the page itself and,
once Redis is back, stored exactly once -- nothing the user did is lost."""
from __future__ import annotations

import time

import pytest
import redis

from core.embedded_redis import EmbeddedRedis
from tests.support.chat_page import ask, events, open_chat, outbox, reply, wait_outbox_empty
from tests.support.processes import ServerProc, base_env, free_port

pytestmark = [pytest.mark.integration, pytest.mark.browser]
PREFIX = "ob:"


def test_feedback_clicked_during_a_redis_outage_is_resent_by_the_page_and_stored_once(tmp_path, models_dir, page):
    store = EmbeddedRedis(tmp_path / "data")
    store.start()
    srv = ServerProc(base_env(store.url, PREFIX, tmp_path / "data"), free_port(), tmp_path / "server.log",
                     prefix=PREFIX).start()
    restarted = None
    try:
        received = open_chat(page, srv)
        rid = ask(page, "hello")
        store.kill()
        reply(page, rid).get_by_test_id("thumb-up").click()
        [(fid, frame)] = outbox(page).items()
        assert frame["kind"] == "thumbs" and frame["value"] == 1
        # the server answers `unavailable` for it, and the page resends it (every 2 s) while Redis is away
        deadline = time.monotonic() + 30
        while sum(f.get("type") == "error" and f.get("code") == "unavailable" and f.get("ref") == fid
                  for f in received) < 2:
            assert time.monotonic() < deadline, f"no two unavailable answers to the page's resends: {received[-6:]}"
            page.wait_for_timeout(100)   # Playwright's sync API delivers websocket events while it waits
        assert fid in outbox(page)                              # still held: not acknowledged

        restarted = EmbeddedRedis(tmp_path / "data", port=store.port)
        restarted.start()
        wait_outbox_empty(page, timeout=60)
        page.wait_for_timeout(1000)                             # a resend still in flight would land now
        rdb = redis.Redis.from_url(restarted.url, decode_responses=True)
        [ev] = events(srv, rdb, feedback_id=fid)
        assert ev["kind"] == "thumbs" and ev["value"] == "1" and ev["reply_id"] == rid
        assert any(f.get("type") == "ack" and f.get("feedback_id", f.get("ref")) == fid for f in received), received[-5:]
        assert page.errors == []
    finally:
        srv.stop()
        for s in (restarted, store):
            if s is not None:
                s.stop()
