"""The archive run in-process (the function the beat task calls) on a real Redis and a real
folder: what moves, what stays, crash duplicates, an unwritable location, retention, forgets."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.archive import Archive, day_of, new_batch
from core.history import History
from core.keys import Keys
from core.records import ReplyRecord, SessionRecord
from core.settings import WorkerSettings
from tests.support.archive import consume_events, files_containing, log_session
from worker.archive.run import run_archive

pytestmark = pytest.mark.integration

OLD = time.time() - 3 * 3600  # idle longer than the hot window below


@pytest.fixture
def keys(prefix) -> Keys:
    return Keys(prefix)


@pytest.fixture
def settings(tmp_path, redis_url, prefix) -> WorkerSettings:
    return WorkerSettings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path, hot_session_idle_s=3600,
                          worker_abandon_idle_s=1800, hot_stream_s=600)


def _history(rdb, keys, settings) -> History:
    return History(rdb, keys, Archive(settings.archive_location))


def test_finished_sessions_move_and_read_back_as_they_were(rdb, keys, settings):
    done = log_session(rdb, keys, at=OLD)
    active = log_session(rdb, keys, at=time.time())
    pending = log_session(rdb, keys, at=OLD, state="pending")
    consume_events(rdb, keys)
    out = run_archive(rdb, keys, settings)
    assert out["ok"] and out["moved"]["sessions"] == 1 and out["moved"]["replies"] == 2
    assert not rdb.exists(keys.session_meta(done.session.session_id), *(keys.reply(r.reply_id) for r in done.replies))
    assert not rdb.exists(*(keys.reward(r.reply_id) for r in done.replies))
    assert rdb.zscore(keys.sessions, done.session.session_id) is None
    for kept in (active, pending):  # still in play: stays in Redis
        assert rdb.exists(keys.session_meta(kept.session.session_id), *(keys.reply(r.reply_id) for r in kept.replies))
    h = _history(rdb, keys, settings)
    assert h.session(done.session.session_id) == done.session
    ids = [r.reply_id for r in done.replies]
    assert h.replies(ids) == {r.reply_id: r for r in done.replies}  # tokens and log-probs exactly
    assert h.ledger(ids) == {e.reply_id: e for e in done.ledger}
    listed = [s.session_id for s in h.sessions(user="u1")]
    assert set(listed) == {done.session.session_id, active.session.session_id, pending.session.session_id}


def test_processed_stream_entries_move_and_are_trimmed_only_below_the_cursor(rdb, keys, settings):
    old = log_session(rdb, keys, at=OLD)
    consume_events(rdb, keys)
    new = log_session(rdb, keys, at=time.time())  # not consumed yet, and recent
    out = run_archive(rdb, keys, settings)
    assert out["moved"]["entries"] == {"events": 4, "rewards": 2}
    cursor = rdb.get(keys.archive_cursor("events"))
    assert cursor == old.events[-1].stream_id
    assert [i for i, _ in rdb.xrange(keys.events)] == [e.stream_id for e in new.events]  # trimmed below it only
    h = _history(rdb, keys, settings)
    assert [e.stream_id for e in h.events()] == [e.stream_id for e in old.events + new.events]
    assert h.rewards() == old.rewards + new.rewards
    assert h.rewards(after=old.rewards[0].stream_id, count=1) == [old.rewards[1]]
    assert h.rewards(count=2, newest=True) == new.rewards


def test_unconsumed_events_stay(rdb, keys, settings):
    log_session(rdb, keys, at=OLD)  # no consumer group: no worker has seen them
    out = run_archive(rdb, keys, settings)
    assert "events" not in out["moved"]["entries"] and rdb.xlen(keys.events) == 4


def test_a_crash_after_the_rename_leaves_duplicates_that_read_once(rdb, keys, settings):
    logged = log_session(rdb, keys, at=OLD)
    consume_events(rdb, keys)

    def crash(point):
        if point == "after_rename":
            raise KeyboardInterrupt("power cut")
    with pytest.raises(KeyboardInterrupt):
        run_archive(rdb, keys, settings, archive=Archive(settings.archive_location, crash))
    assert rdb.exists(keys.session_meta(logged.session.session_id))  # nothing deleted
    assert run_archive(rdb, keys, settings)["ok"]  # written again, then deleted
    archive = Archive(settings.archive_location)
    assert len(archive.files("sessions")) == 2 and archive.read(SessionRecord).num_rows == 2
    h = _history(rdb, keys, settings)
    assert h.session(logged.session.session_id) == logged.session
    assert sorted(h.replies([r.reply_id for r in logged.replies])) == sorted(r.reply_id for r in logged.replies)
    assert [e.stream_id for e in h.events()] == [e.stream_id for e in logged.events]


def test_a_session_that_changes_while_written_stays_in_redis(rdb, keys, settings):
    logged = log_session(rdb, keys, at=OLD)
    rid = logged.replies[0].reply_id

    def late_signal(point):
        if point == "after_rename":
            rdb.hset(keys.reward_signals(rid), "ev_late", '{"kind": "copy", "ts": 1}')
    out = run_archive(rdb, keys, settings, archive=Archive(settings.archive_location, late_signal))
    assert out["moved"]["changed"] == 1 and rdb.exists(keys.reply(rid))
    assert run_archive(rdb, keys, settings)["moved"]["sessions"] == 1
    entry = _history(rdb, keys, settings).ledger([rid])[rid]
    assert "ev_late" in entry.signals  # the newest copy wins


def test_an_unwritable_location_keeps_redis_and_recovers(rdb, keys, settings, tmp_path):
    blocker = tmp_path / "archive"
    blocker.write_text("not a folder")  # the location cannot be written (as root, chmod would not stop us)
    logged = log_session(rdb, keys, at=OLD)
    consume_events(rdb, keys)
    out = run_archive(rdb, keys, settings)
    assert out["ok"] is False and "archive" in out["error"]
    status = rdb.hgetall(keys.archive_status)
    assert status["ok"] == "0" and float(status["failing_since"]) > 0
    assert rdb.exists(keys.session_meta(logged.session.session_id)) and rdb.xlen(keys.events) == 4
    assert rdb.get(keys.archive_cursor("events")) is None  # nothing confirmed, nothing trimmed
    assert _gauges(rdb, keys)["rewardloop_archive_failing"] == 1.0  # RewardloopArchiveFailing fires
    assert _ops_storage(rdb, keys)["archive"]["ok"] is False  # and /ops shows the red line
    blocker.unlink()  # space returns
    assert run_archive(rdb, keys, settings)["ok"]
    assert _gauges(rdb, keys)["rewardloop_archive_failing"] == 0.0
    status = rdb.hgetall(keys.archive_status)
    assert status["ok"] == "1" and "failing_since" not in status and "error" not in status
    assert not rdb.exists(keys.session_meta(logged.session.session_id)) and rdb.xlen(keys.events) == 0


def test_retention_deletes_only_expired_partitions(rdb, keys, settings, tmp_path):
    archive = Archive(settings.archive_location)
    now = time.time()
    rows = {d: ReplyRecord(reply_id=f"r{d}", user_id="u", session_id="s") for d in (1, 50, 120, 500)}
    for age, rec in rows.items():
        for rated in (False, True):
            archive.write(ReplyRecord, [rec], day=day_of(now - age * 86400), rated=rated, batch=new_batch())
    settings = WorkerSettings(**{**settings.__dict__, "retention_days": 90, "retention_rated_days": 400})
    out = run_archive(rdb, keys, settings, now=now)
    left = sorted((int(f.rated), f.day) for f in archive.files("replies"))
    assert left == sorted([(0, day_of(now - 86400)), (0, day_of(now - 50 * 86400)), (1, day_of(now - 86400)),
                           (1, day_of(now - 50 * 86400)), (1, day_of(now - 120 * 86400))])
    assert len(out["kept"]["expired_partitions"]) == 3


def test_forget_reaches_the_archive(rdb, keys, settings):
    from service.devtools.privacy import forget_user
    secret = "my passport number is 12345"
    gone = log_session(rdb, keys, user="leaver", at=OLD, text=secret)
    stays = log_session(rdb, keys, user="stayer", at=OLD)
    consume_events(rdb, keys)
    assert run_archive(rdb, keys, settings)["moved"]["sessions"] == 2
    root = Path(settings.archive_location)
    assert files_containing(root, secret)
    forget_user(rdb, keys, "leaver")
    h = _history(rdb, keys, settings)
    assert h.session(gone.session.session_id) is None and h.replies([gone.replies[0].reply_id]) == {}  # hidden at once
    out = run_archive(rdb, keys, settings)
    assert out["kept"]["rows_forgotten"] > 0
    assert files_containing(root, secret) == [] and files_containing(root, "leaver") == []
    assert h.session(stays.session.session_id) == stays.session  # nobody else's data went


def test_the_session_view_reads_the_same_before_during_and_after(rdb, keys, settings):
    from service.devtools.sessions import SessionFilter, SessionLog
    half = log_session(rdb, keys, at=time.time() - 1200)  # events older than the stream window, session active
    whole = log_session(rdb, keys, at=OLD)
    consume_events(rdb, keys)
    log = SessionLog(rdb, keys, Archive(settings.archive_location))
    before = {s: log.detail(s, raw=True) for s in (half.session.session_id, whole.session.session_id)}
    listed = log.list(SessionFilter(user="u1"))
    assert len(before[half.session.session_id]["replies"][0]["events"]) == 1  # the thumbs
    out = run_archive(rdb, keys, settings)
    assert out["moved"]["sessions"] == 1 and out["moved"]["entries"]["events"] == 8
    assert rdb.exists(keys.session_meta(half.session.session_id)) and rdb.xlen(keys.events) == 0
    after = {s: log.detail(s, raw=True) for s in before}
    assert after == before
    assert log.list(SessionFilter(user="u1")) == listed
    assert log.session_of_reply(whole.replies[0].reply_id) == whole.session.session_id


def _gauges(rdb, keys) -> dict[str, float]:
    """What /metrics says (the ops collector, on this test's keys)."""
    from service.api.ops_metrics import OpsCollector
    from worker.ops.store import OpsStore
    return {s.name: s.value for fam in OpsCollector(OpsStore(rdb, keys)).collect() for s in fam.samples
            if not s.labels}


def _ops_storage(rdb, keys) -> dict:
    from worker.ops.state import build_state
    from worker.ops.store import OpsStore
    return build_state(OpsStore(rdb, keys), 60, time.time())["storage"]


def test_the_memory_alert_fires_at_80_percent(rdb, keys):
    import os

    import yaml
    if os.environ.get("REWARDLOOP_REDIS_URL"):
        pytest.skip("changes maxmemory: only on the tests' own embedded Redis")
    rules = {r["alert"]: r["expr"] for g in yaml.safe_load((Path(__file__).parents[2] / "deploy" /
                                                             "prometheus-alerts.yml").read_text())["groups"]
             for r in g["rules"]}
    assert "rewardloop_redis_memory_ratio) > 0.8" in rules["RewardloopRedisMemoryHigh"]
    used = int(rdb.info("memory")["used_memory"])
    try:
        rdb.config_set("maxmemory", int(used / 0.85))
        g = _gauges(rdb, keys)
        assert g["rewardloop_redis_memory_ratio"] > 0.8 and _ops_storage(rdb, keys)["memory_alert"] is True
        rdb.config_set("maxmemory", used * 4)
        assert _gauges(rdb, keys)["rewardloop_redis_memory_ratio"] < 0.8 and not _ops_storage(rdb, keys)["memory_alert"]
    finally:
        rdb.config_set("maxmemory", 0)


def test_compaction_merges_a_past_days_files_keeping_every_part_and_one_copy(rdb, keys, settings):
    archive = Archive(settings.archive_location)
    day = day_of(time.time() - 3 * 86400)
    first = SessionRecord(session_id="s1", user_id="u", created=1.0, last_active=2.0, title="hi",
                          history=["r1"], replies=["r1"])
    second = SessionRecord(session_id="s1", user_id="u", created=5.0, last_active=6.0, title="again",
                           history=["r2"], replies=["r2"])  # the part that came back to Redis, moved later
    for part in (first, second):
        archive.write(SessionRecord, [part], day=day, rated=False, batch=new_batch())
    reply = ReplyRecord(reply_id="r1", user_id="u", session_id="s1", text="x")
    for _ in range(2):  # a crash's duplicate
        archive.write(ReplyRecord, [reply], day=day, rated=False, batch=new_batch())
    out = run_archive(rdb, keys, settings)
    assert out["kept"]["compacted"] == 2
    assert len(archive.files("sessions")) == len(archive.files("replies")) == 1
    assert archive.read(ReplyRecord).num_rows == 1
    merged = _history(rdb, keys, settings).session("s1")
    assert (merged.history, merged.replies, merged.created, merged.last_active, merged.title) == \
        (["r1", "r2"], ["r1", "r2"], 1.0, 6.0, "hi")
