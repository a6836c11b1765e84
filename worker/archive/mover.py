"""Moving finished data out of Redis into the archive: the one writer of core/archive.py.

One run (worker/tasks.py `archive`, every REWARDLOOP_ARCHIVE_EVERY_S, one at a time):
1. Sessions that are over - idle for REWARDLOOP_HOT_SESSION_IDLE_S (or the oldest ones, past
   REWARDLOOP_HOT_MAX_SESSIONS) with every reply's reward final - are written with their
   replies, ledger entries and signals to the `sessions`, `replies` and `ledger` tables.
2. Stream entries (events, rewards, pairs) older than REWARDLOOP_HOT_STREAM_S that the reward
   workers have consumed and the ops monitor has folded are written to their tables.
3. Only when every file of a step is renamed into place does Redis let go: a session's keys
   are deleted by a script that first checks nothing changed since they were read, and a
   stream's archive cursor moves to the last entry written before XTRIM MINID trims below it.
A crash before the rename leaves a temporary file (removed later) and Redis untouched; a
crash after it leaves the data in both, and it is written again next run: readers drop the
duplicate by id. Retention, forgets and compaction follow (worker/archive/retention.py).
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field

from core.archive import Archive, day_of, new_batch
from core.records import EventRecord, FinalReward, PairRecord, ReplyRecord, RewardEntry, SessionRecord, stream_key
from core.settings import WorkerSettings
from worker.archive.store import ArchiveRedis, SessionSnapshot, now_ms

log = logging.getLogger(__name__)

SESSIONS_PER_RUN = 5000   # most sessions one run moves
SCAN_FACTOR = 4           # looks at up to this many times as many of the oldest sessions
STREAM_BATCH = 20_000     # stream entries per file write
STREAM_PER_RUN = 200_000  # most entries of one stream one run moves
STREAM_CLASSES = {"events": EventRecord, "rewards": FinalReward, "pairs": PairRecord}


@dataclass
class MoveReport:
    sessions: int = 0
    replies: int = 0
    ledger: int = 0
    changed: int = 0   # sessions that changed while being written: left in Redis, moved next run
    entries: dict[str, int] = field(default_factory=dict)
    trimmed: dict[str, int] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0

    def as_dict(self) -> dict:
        return {"sessions": self.sessions, "replies": self.replies, "ledger": self.ledger, "changed": self.changed,
                "entries": dict(self.entries), "trimmed": dict(self.trimmed), "files": self.files,
                "bytes": self.bytes}


def crash_hook(point: str):
    """Fault injection for the crash tests (REWARDLOOP_ARCHIVE_CRASH_AT): SIGKILL the worker's
    whole process group at `point`, as a power cut would."""
    if not point:
        return None

    def hook(at: str) -> None:
        if at == point:
            log.error("REWARDLOOP_ARCHIVE_CRASH_AT=%s: killing the worker's process group now", point)
            os.killpg(os.getpgrp(), signal.SIGKILL)
    return hook


# --- sessions ----------------------------------------------------------------------------------
def settled(snap: SessionSnapshot, settings: WorkerSettings, now: float) -> bool:
    """Every reply's reward is final (a reply no worker ever opened an entry for counts once it is
    older than REWARDLOOP_HOT_STUCK_S)."""
    for rid in snap.session.replies:
        entry, reply = snap.ledger.get(rid), snap.replies.get(rid)
        if entry is not None:
            if not entry.final:
                return False
        elif reply is not None and now - (reply.ended_at or reply.logged_at or now) < settings.hot_stuck_s:
            return False
    return True


def session_candidates(store: ArchiveRedis, settings: WorkerSettings, now: float, limit: int) -> list[str]:
    """Idle sessions, oldest first; past hot_max_sessions the oldest ones whatever their idle time."""
    ids, total = store.oldest_sessions(limit * SCAN_FACTOR)
    over = max(0, total - settings.hot_max_sessions)
    out = []
    for sid, raw in store.last_active(ids).items():
        try:
            idle = now - float(raw) if raw else float("inf")
        except ValueError:
            idle = float("inf")
        if idle >= settings.hot_session_idle_s or len(out) < over:
            out.append(sid)
        if len(out) >= limit:
            break
    return out


def move_sessions(store: ArchiveRedis, archive: Archive, settings: WorkerSettings, now: float,
                  report: MoveReport, limit: int = SESSIONS_PER_RUN) -> None:
    snaps = [s for s in store.snapshots(session_candidates(store, settings, now, limit)) if settled(s, settings, now)]
    if not snaps:
        return
    parts: dict[tuple, list] = defaultdict(list)
    for snap in snaps:
        s = snap.session
        day = day_of(s.last_active or s.created or now)
        rated = False
        for rid in s.replies:
            entry = snap.ledger.get(rid)
            explicit = bool(entry and entry.explicit)
            rated |= explicit
            if rid in snap.replies:
                parts[(ReplyRecord, day, explicit)].append(snap.replies[rid])
            if entry is not None:
                parts[(RewardEntry, day, explicit)].append(entry)
        parts[(SessionRecord, day, rated)].append(s)
    _write_parts(archive, parts, report)
    archive.hook("after_rename")
    for snap in snaps:
        if store.delete_session(snap):
            report.sessions += 1
            report.replies += len(snap.replies)
            report.ledger += len(snap.ledger)
        else:
            report.changed += 1


def _write_parts(archive: Archive, parts: dict, report: MoveReport) -> None:
    batch = new_batch()
    for (cls, day, rated), rows in sorted(parts.items(), key=lambda kv: (kv[0][0].TABLE, kv[0][1], kv[0][2])):
        f = archive.write(cls, rows, day=day, rated=rated, batch=batch)
        report.files += 1
        report.bytes += f.size


# --- streams -----------------------------------------------------------------------------------
def stream_bounds(store: ArchiveRedis, settings: WorkerSettings, stream: str, now: float) -> list | None:
    """(stream key, inclusive) limits an entry must stay within to move; None: nothing may move."""
    bounds = []
    if store.length(stream) <= settings.hot_stream_max:
        bounds.append(((now_ms(now) - int(settings.hot_stream_s * 1000), 0), False))
    if stream == "events":
        consumed = store.consumed_bound()
        if consumed is None:
            return None
        bounds.append(consumed)
    folded = store.folded_bound(stream)
    if folded is not None:
        bounds.append(folded)
    return bounds


def _within(key: tuple[int, int], bounds: list) -> bool:
    return all(key <= b if inclusive else key < b for b, inclusive in bounds)


def move_stream(store: ArchiveRedis, archive: Archive, settings: WorkerSettings, stream: str, now: float,
                report: MoveReport, *, per_run: int = STREAM_PER_RUN) -> None:
    bounds = stream_bounds(store, settings, stream, now)
    if bounds is None:
        return
    cls, moved = STREAM_CLASSES[stream], 0
    after = store.cursor(stream)
    while moved < per_run:
        entries = store.read_after(stream, after, STREAM_BATCH)
        ready = []
        for sid, fields in entries:
            if not _within(stream_key(sid), bounds):
                break
            ready.append(cls.from_redis(fields, stream_id=sid))
        if not ready:
            break
        parts: dict[tuple, list] = defaultdict(list)
        for rec in ready:
            parts[(cls, day_of(stream_key(rec.stream_id)[0] / 1000), rec.explicit)].append(rec)
        _write_parts(archive, parts, report)
        archive.hook("after_rename")
        after = ready[-1].stream_id
        report.trimmed[stream] = report.trimmed.get(stream, 0) + store.confirm(stream, after)
        report.entries[stream] = report.entries.get(stream, 0) + len(ready)
        moved += len(ready)
        if len(ready) < len(entries) or len(entries) < STREAM_BATCH:
            break


def move(store: ArchiveRedis, archive: Archive, settings: WorkerSettings, now: float | None = None,
         heartbeat=lambda: None) -> MoveReport:
    """Sessions, then the three streams (heartbeat() between steps keeps the run's lock). Raises
    what the archive raised (full, unwritable): what was not yet renamed stays in Redis."""
    now = now or time.time()
    report = MoveReport()
    move_sessions(store, archive, settings, now, report)
    for stream in STREAM_CLASSES:
        heartbeat()
        move_stream(store, archive, settings, stream, now, report)
    heartbeat()
    return report


def new_token() -> str:
    return secrets.token_hex(8)
