"""The archive task in a real Celery worker (real beat, real Redis): SIGKILLed between the file
write and its rename, and between the rename and the Redis delete, nothing is lost and nothing
is read twice once a fresh worker has finished the job; with an unwritable location it reports
the failure, Redis keeps everything, and it recovers once the location is writable."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from core.archive import Archive
from core.history import History
from core.keys import Keys
from core.records import ReplyRecord
from tests.support.archive import consume_events, log_session
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

ARCHIVE = {"REWARDLOOP_ARCHIVE_EVERY_S": "1", "REWARDLOOP_HOT_SESSION_IDLE_S": "3600",
           "REWARDLOOP_HOT_STREAM_S": "600"}


@pytest.mark.parametrize("point", ["before_rename", "after_rename"])
def test_a_worker_killed_mid_archive_loses_nothing_and_doubles_nothing(point, procs, worker_env, rdb, prefix):
    keys = Keys(prefix)
    logged = [log_session(rdb, keys, user=f"u{i}", at=time.time() - 3 * 3600) for i in range(3)]
    consume_events(rdb, keys)
    crashing = worker_env(**ARCHIVE, REWARDLOOP_ARCHIVE_CRASH_AT=point)
    root = Path(crashing["REWARDLOOP_DATA_DIR"]) / "archive"
    worker = procs.start(crashing, "worker", "--queues", "ops")
    procs.start(crashing, "beat")  # its own process group: the crash takes the worker's only
    wait_for(lambda: worker.poll() is not None, 120, f"the worker to be killed at {point}", procs)
    assert worker.returncode == -signal.SIGKILL

    archive = Archive(root)
    temps = [p for p in root.rglob("*.tmp")]
    if point == "before_rename":
        assert temps and archive.files("replies") == []  # written, never renamed: readers see nothing
    else:
        assert archive.read(ReplyRecord).num_rows == 6  # renamed, Redis not yet told
    for s in logged:  # nothing left Redis
        assert rdb.exists(keys.session_meta(s.session.session_id), *(keys.reply(r.reply_id) for r in s.replies)) == 3

    procs.start(worker_env(**ARCHIVE), "worker", "--queues", "ops")  # a fresh worker finishes the job
    wait_for(lambda: rdb.zcard(keys.sessions) == 0 and rdb.xlen(keys.events) == 0, 120, "the archive run", procs)
    history = History(rdb, keys, archive)
    for s in logged:
        assert history.session(s.session.session_id) == s.session
        assert history.replies([r.reply_id for r in s.replies]) == {r.reply_id: r for r in s.replies}
        assert history.ledger([e.reply_id for e in s.ledger]) == {e.reply_id: e for e in s.ledger}
    events = [e.stream_id for e in history.events()]
    assert events == sorted({e.stream_id for s in logged for e in s.events}, key=lambda i: tuple(map(int, i.split("-"))))
    assert [r.stream_id for r in history.rewards()] == [r.stream_id for s in logged for r in s.rewards]
    rows = archive.read(ReplyRecord).num_rows
    assert rows == (12 if point == "after_rename" else 6)  # the crash's copy is still on disk, read once


def test_an_unwritable_location_is_reported_keeps_redis_and_recovers(procs, worker_env, rdb, prefix):
    from service.api.ops_metrics import OpsCollector
    from worker.ops.store import OpsStore
    keys = Keys(prefix)
    logged = log_session(rdb, keys, at=time.time() - 3 * 3600)
    consume_events(rdb, keys)
    env = worker_env(**ARCHIVE)
    blocker = Path(env["REWARDLOOP_DATA_DIR"]) / "archive"
    blocker.write_text("a file where the archive folder should be")  # unwritable, even for root
    procs.start(env, "worker", "--queues", "ops")
    procs.start(env, "beat")
    status = wait_for(lambda: rdb.hgetall(keys.archive_status).get("ok") == "0" and rdb.hgetall(keys.archive_status),
                      120, "the archive task to report the failure", procs)
    assert "archive" in status["error"] and float(status["failing_since"]) > 0
    gauges = {s.name: s.value for f in OpsCollector(OpsStore(rdb, keys)).collect() for s in f.samples if not s.labels}
    assert gauges["rewardloop_archive_failing"] == 1.0  # RewardloopArchiveFailing fires
    assert rdb.exists(keys.session_meta(logged.session.session_id)) and rdb.xlen(keys.events) == 4
    assert rdb.get(keys.archive_cursor("events")) is None  # nothing confirmed, nothing trimmed
    blocker.unlink()  # space returns
    # the run that moves everything writes its status last: wait for that too
    wait_for(lambda: rdb.zcard(keys.sessions) == 0 and rdb.xlen(keys.events) == 0
             and rdb.hget(keys.archive_status, "ok") == "1", 120, "the archive to recover", procs)
    assert "error" not in rdb.hgetall(keys.archive_status)
    assert History(rdb, keys, Archive(blocker)).session(logged.session.session_id) == logged.session
