"""One archive run, as the beat task and `rewardloop archive run` call it: under the archive
lock, move what is finished (mover.py), then retention, forgets and compaction
(retention.py), and record the outcome in the status hash that /ops and /metrics read.

A run that cannot write (the location is unwritable or full) records `ok=0`, the error and
since when it fails (the RewardloopArchiveFailing alert and a red line on /ops), leaves
Redis as it was, and the next run tries again. Redis errors go to Celery's retry.
"""
from __future__ import annotations

import json
import logging
import time

import redis

from core.archive import Archive
from core.keys import Keys
from core.settings import WorkerSettings
from worker.archive.mover import crash_hook, move, new_token
from worker.archive.retention import KeepReport, apply_tombstones, keep
from worker.archive.store import ArchiveRedis

log = logging.getLogger(__name__)

MEMORY_ALERT_RATIO = 0.8  # Redis used_memory / maxmemory that raises the alert


def archive_for(settings: WorkerSettings) -> Archive:
    return Archive(settings.archive_location, crash_hook(settings.archive_crash_at))


def lock_ttl_s(settings: WorkerSettings) -> float:
    """The run's lock lives two periods, renewed between steps: a run killed mid-way (its worker
    died) holds up the next ones that long at most."""
    return max(10.0, 2 * settings.archive_every_s)


def memory_fields(store: ArchiveRedis) -> dict:
    mem = store.memory()
    ratio = mem["used"] / mem["max"] if mem["max"] else 0.0
    return {"redis_used": mem["used"], "redis_max": mem["max"], "redis_ratio": round(ratio, 4),
            "memory_alert": int(ratio >= MEMORY_ALERT_RATIO)}


def run_archive(client: redis.Redis, keys: Keys, settings: WorkerSettings, archive: Archive | None = None,
                now: float | None = None) -> dict:
    store = ArchiveRedis(client, keys)
    token = new_token()
    ttl = lock_ttl_s(settings)
    if not store.lock(token, ttl):
        return {"ok": None, "skipped": "another archive run holds the lock"}
    try:
        return _run(store, archive or archive_for(settings), settings, now, lambda: store.renew(token, ttl))
    finally:
        store.unlock(token)


def _run(store: ArchiveRedis, archive: Archive, settings: WorkerSettings, now: float | None, heartbeat) -> dict:
    now = now or time.time()
    started = time.monotonic()
    status = store.status()
    memory = memory_fields(store)
    if memory["memory_alert"]:
        log.warning("Redis memory at %.0f%% of maxmemory (%d of %d bytes): is the archive keeping up?",
                    100 * memory["redis_ratio"], memory["redis_used"], memory["redis_max"])
    try:
        moved = move(store, archive, settings, now, heartbeat)
        users, sessions = store.tombstones()
        kept, applied = keep(archive, retention_days=settings.retention_days, rated_days=settings.retention_rated_days,
                             users=users, sessions=sessions, applied_at=float(status.get("tombstones_applied_at") or 0),
                             now=now)
        usage = archive.usage()
    except redis.RedisError:
        raise
    except Exception as exc:  # the archive cannot be written: report it, keep Redis as it is, retry next run
        error = f"{type(exc).__name__}: {exc}"[:2000]
        since = status.get("failing_since") or repr(now)
        store.set_status({"at": now, "ok": 0, "error": error, "failing_since": since, "location": archive.url,
                          **memory}, {"failures": 1})
        log.error("archive run failed (nothing was removed from Redis; retrying every run): %s", error)
        return {"ok": False, "error": error, "failing_since": float(since), **memory}
    counts = {"sessions": moved.sessions, "replies": moved.replies, **{f"{s}_entries": n for s, n in
                                                                        moved.entries.items()}}
    fields = {"at": now, "ok": 1, "last_ok_at": now, "run_s": round(time.monotonic() - started, 3),
              "location": archive.url, "tombstones_applied_at": applied,
              "archive_files": sum(u["files"] for u in usage.values()),
              "archive_bytes": sum(u["bytes"] for u in usage.values()),
              "last_moved": json.dumps(moved.as_dict()), "last_kept": json.dumps(kept.as_dict()), **memory}
    store.set_status(fields, counts, clear=("error", "failing_since"))
    if moved.sessions or moved.entries or kept.expired_files or kept.rewritten or kept.compacted:
        log.info("archive: moved %s; kept %s", moved.as_dict(), kept.as_dict())
    return {"ok": True, "moved": moved.as_dict(), "kept": kept.as_dict(), **memory}


def apply_forgets(client: redis.Redis, keys: Keys, location: str) -> dict:
    """Rewrite the archive files that hold a forgotten user's or deleted conversation's rows now
    (`rewardloop users forget`), under the archive lock; when a run holds it, that run (or the
    next) does it. Readers hide those rows either way."""
    store = ArchiveRedis(client, keys)
    token = new_token()
    if not store.lock(token, 600):
        return {"applied": False, "why": "an archive run is in progress; it applies the forget"}
    try:
        report = KeepReport()
        users, sessions = store.tombstones()
        applied = float(store.status().get("tombstones_applied_at") or 0)
        applied = apply_tombstones(Archive(location), users, sessions, applied, report)
        store.set_status({"tombstones_applied_at": applied})
        return {"applied": True, "files_rewritten": report.rewritten, "rows_removed": report.rows_forgotten}
    finally:
        store.unlock(token)
