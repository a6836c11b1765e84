"""A user's conversations read the same once the archive moved them out of Redis: listed with
their titles, reopened with the tree and the feedback state, renamed, and deleted (the
tombstone hides the archived rows before the archive task rewrites the files)."""
from __future__ import annotations

import time

import pytest

from core.archive import Archive
from core.history import History
from core.keys import Keys
from core.settings import WorkerSettings
from service.devtools.privacy import forget_session
from service.serving.conversations import Conversations
from tests.support.archive import consume_events, files_containing, log_session
from worker.archive.run import run_archive

pytestmark = pytest.mark.integration
OLD = time.time() - 3 * 3600


def test_archived_conversations_list_open_rename_and_delete(rdb, prefix, tmp_path, redis_url):
    keys = Keys(prefix)
    settings = WorkerSettings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path, hot_session_idle_s=3600,
                              worker_abandon_idle_s=1800, hot_stream_s=600)
    old = log_session(rdb, keys, user="ann", turns=3, at=OLD, text="Parquet keeps columns together")
    new = log_session(rdb, keys, user="ann", turns=1, at=time.time())
    log_session(rdb, keys, user="ben", turns=1, at=OLD)
    rdb.hset(keys.session_meta(old.session.session_id), mapping={   # as the server writes them
        "title": "About Parquet", **{f"fb:{r.reply_id}:thumbs": "1" for r in old.replies}})
    consume_events(rdb, keys)
    assert run_archive(rdb, keys, settings)["moved"]["sessions"] == 2
    assert not rdb.exists(keys.session_meta(old.session.session_id))      # really gone from Redis
    conv = Conversations(History(rdb, keys, Archive(settings.archive_location)))

    listed = conv.list("ann")
    assert [s["session_id"] for s in listed] == [new.session.session_id, old.session.session_id]
    assert listed[1]["title"] == "About Parquet" and listed[1]["replies"] == 3
    assert [s["session_id"] for s in conv.list("ann", "parquet keeps")] == [old.session.session_id]
    got = conv.get("ann", old.session.session_id)
    rids = [r.reply_id for r in old.replies]
    assert got["branch"] == rids and [r["reply_id"] for r in got["replies"]] == rids
    assert [r["parent_id"] for r in got["replies"]] == ["", rids[0], rids[1]]    # from the turn order
    assert all(r["feedback"] == {"thumbs": 1} for r in got["replies"])
    assert conv.get("ben", old.session.session_id) is None                   # not the owner: nothing

    assert conv.rename("ann", old.session.session_id, "Columns")["title"] == "Columns"
    assert conv.list("ann")[1]["title"] == "Columns"
    forget_session(rdb, keys, old.session.session_id, "ann")
    assert [s["session_id"] for s in conv.list("ann")] == [new.session.session_id]
    assert conv.get("ann", old.session.session_id) is None
    run_archive(rdb, keys, settings)          # the next run rewrites the files: the text is gone
    assert files_containing(tmp_path, "Parquet keeps columns together") == []
