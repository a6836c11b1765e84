"""A session the archive moves while its page stays open: the user writes again on the same
websocket, the session comes back to Redis whole (owner, indexes), moves again later, and every
reader sees one session of both parts (real tiny-model server, real reward pipeline)."""
from __future__ import annotations

import time

import pytest

from core.archive import Archive
from core.keys import Keys
from core.redis_conn import connect
from core.settings import WorkerSettings
from service.devtools.sessions import SessionLog
from tests.support.clients import Chat
from tests.support.devtools import finalize_rewards
from worker.archive.run import run_archive

pytestmark = pytest.mark.integration


def test_a_session_moved_while_open_continues_and_reads_as_one(server, redis_url, tmp_path):
    keys, r = Keys(server.prefix), connect(redis_url)
    settings = WorkerSettings(redis_url=redis_url, prefix=server.prefix, data_dir=tmp_path,
                              hot_session_idle_s=0.2, worker_abandon_idle_s=0.1, hot_stream_s=3600)
    chat = Chat(server, server.token("carol"))
    first = chat.ask("hello")
    assert chat.feedback(first["start"]["reply_id"], "thumbs", 1)["type"] == "ack"
    finalize_rewards(redis_url, server.prefix)
    assert run_archive(r, keys, settings, now=later())["moved"]["sessions"] == 1
    assert not r.exists(keys.session_meta(chat.session_id))

    second = chat.ask("are you still there?")  # the same connection, the same session id
    meta = r.hgetall(keys.session_meta(chat.session_id))
    assert meta["user_id"] == "carol" and float(meta["created"]) > 0
    assert r.zscore(keys.sessions, chat.session_id) and r.zscore(keys.user_sessions("carol"), chat.session_id)

    log = SessionLog(r, keys, Archive(settings.archive_location))
    ids = [first["start"]["reply_id"], second["start"]["reply_id"]]
    half = log.detail(chat.session_id)
    assert [x["reply_id"] for x in half["replies"]] == ids and half["user_id"] == "carol"
    assert half["replies"][0]["reward"]["state"] == "rewarded"   # the archived half, ledger and all
    finalize_rewards(redis_url, server.prefix)
    assert run_archive(r, keys, settings, now=later())["moved"]["sessions"] == 1  # the second part moves too
    whole = log.detail(chat.session_id)
    assert [x["reply_id"] for x in whole["replies"]] == ids and whole["turns"] == 2
    assert [s["session_id"] for s in log.list(log_filter("carol"))] == [chat.session_id]
    from service.devtools import query
    cols, rows = query.run(log.history, log.history.archive, "SELECT len(replies), title FROM sessions")
    assert rows == [(2, "hello")]  # one row, both parts, the first message's title
    chat.close()


def later() -> float:
    """A moment past the hot window's idle time (0.2 s), however fast the test ran."""
    return time.time() + 1.0


def log_filter(user: str):
    from service.devtools.sessions import SessionFilter
    return SessionFilter(user=user)
