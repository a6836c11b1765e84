"""What the archive task does to files already written: retention, forgets and compaction.

- Retention: a partition (table, day, rated) whose day is older than REWARDLOOP_RETENTION_DAYS
  (REWARDLOOP_RETENTION_RATED_DAYS for rated=1: records with explicit feedback) is deleted
  whole; 0 keeps it forever. Nothing else is ever deleted by age.
- Tombstones (`rewardloop users forget`, conversation deletes): readers hide a tombstoned
  user's or session's rows at once (core/history.py); here every file holding such rows is
  rewritten without them (new file renamed into place first, then the old one removed), so
  afterwards their text is in no file. The newest tombstone applied is kept in the status hash.
- Compaction: the files of a past day's partition are merged into one, keeping the newest row
  of each id (what readers would keep), so duplicates left by crashes go and reads stay fast.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from core.archive import BATCH_COL, Archive, ArchiveFile, day_of, new_batch
from core.history import session_parts
from core.records import TABLES, SessionRecord

log = logging.getLogger(__name__)

COMPACT_PER_RUN = 20  # partitions merged per run at most (bounds the run's time)


@dataclass
class KeepReport:
    expired_files: int = 0
    expired_partitions: list[str] = field(default_factory=list)
    rewritten: int = 0      # files rewritten without tombstoned rows
    rows_forgotten: int = 0
    compacted: int = 0      # partitions merged
    temps_removed: int = 0

    def as_dict(self) -> dict:
        return {"expired_files": self.expired_files, "expired_partitions": list(self.expired_partitions),
                "rewritten": self.rewritten, "rows_forgotten": self.rows_forgotten, "compacted": self.compacted,
                "temps_removed": self.temps_removed}


def _partitions(archive: Archive, table: str) -> dict[tuple[str, bool], list[ArchiveFile]]:
    parts = defaultdict(list)
    for f in archive.files(table):
        parts[(f.day, f.rated)].append(f)
    return parts


def expire(archive: Archive, retention_days: float, rated_days: float, now: float, report: KeepReport) -> None:
    """Delete whole partitions older than their retention."""
    for table in TABLES:
        for (day, rated), files in _partitions(archive, table).items():
            keep = rated_days if rated else retention_days
            if keep > 0 and day < day_of(now - keep * 86400):
                archive.remove(files)
                report.expired_files += len(files)
                report.expired_partitions.append(f"{table}/day={day}/rated={int(rated)}")


def _dead_mask(data, users: set[str], sessions: set[str]):
    import pyarrow as pa
    import pyarrow.compute as pc
    dead = pa.array([False] * data.num_rows)
    for column, ids in (("user_id", users), ("session_id", sessions)):
        if ids and column in data.column_names:
            dead = pc.or_(dead, pc.fill_null(pc.is_in(data[column], value_set=pa.array(sorted(ids))), False))
    return dead


def _rewrite(archive: Archive, cls, files: list[ArchiveFile], users: set[str], sessions: set[str],
             dedup: bool) -> tuple[int, int]:
    """Replace `files` (one partition) by one file without tombstoned rows (and, with dedup, one
    row per id): the new file is renamed into place before the old ones are removed.
    -> (rows dropped as tombstoned, rows kept)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    data = archive.read(cls, files=files)
    dead = _dead_mask(data, users, sessions)
    gone = int(pc.sum(dead).as_py() or 0)
    data = data.filter(pc.invert(dead))
    if dedup and data.num_rows and cls is SessionRecord:  # a session's parts join into one row
        merged = session_parts(data)
        batches = {}
        for row in data.to_pylist():
            batches[row[cls.ID]] = max(batches.get(row[cls.ID], ""), row[BATCH_COL])
        data = pa.Table.from_pylist([dict(rec.to_row(), **{BATCH_COL: batches[sid]}) for sid, rec in merged.items()],
                                    schema=data.schema)
    elif dedup and data.num_rows:
        data = data.sort_by([(cls.ID, "ascending"), (BATCH_COL, "descending")])
        ids = data[cls.ID].to_pylist()
        keep = [i == 0 or ids[i] != ids[i - 1] for i in range(len(ids))]
        data = data.filter(pa.array(keep))
    if data.num_rows:
        archive.write_arrow(cls.TABLE, data, day=files[0].day, rated=files[0].rated, batch=new_batch())
    archive.remove(files)
    return gone, data.num_rows


def apply_tombstones(archive: Archive, users: dict[str, float], sessions: dict[str, float], applied_at: float,
                     report: KeepReport) -> float:
    """Rewrite every file that holds rows of a tombstoned user or session, when a tombstone newer
    than `applied_at` exists. -> the newest tombstone time now applied."""
    newest = max([*users.values(), *sessions.values(), 0.0])
    if newest <= applied_at:
        return applied_at
    dead_users, dead_sessions = set(users), set(sessions)
    for table, cls in TABLES.items():
        for f in archive.files(table):
            cols = [c for c in ("user_id", "session_id") if c in cls.arrow_schema().names]
            ids = archive.read(cls, columns=cols, files=[f])
            if not int(_count(_dead_mask(ids, dead_users, dead_sessions))):
                continue
            gone, _ = _rewrite(archive, cls, [f], dead_users, dead_sessions, dedup=False)
            report.rewritten += 1
            report.rows_forgotten += gone
    log.info("archive: tombstones up to %s applied: %d file(s) rewritten, %d row(s) removed", newest,
             report.rewritten, report.rows_forgotten)
    return newest


def _count(mask) -> int:
    import pyarrow.compute as pc
    return pc.sum(mask).as_py() or 0


def compact(archive: Archive, users: set[str], sessions: set[str], now: float, report: KeepReport,
            limit: int = COMPACT_PER_RUN) -> None:
    """Merge the files of past days' partitions (one file each afterwards)."""
    today = day_of(now)
    for table, cls in TABLES.items():
        for (day, _), files in sorted(_partitions(archive, table).items()):
            if report.compacted >= limit:
                return
            if day >= today or len(files) < 2:
                continue
            gone, _ = _rewrite(archive, cls, files, users, sessions, dedup=True)
            report.compacted += 1
            report.rows_forgotten += gone


def keep(archive: Archive, *, retention_days: float, rated_days: float, users: dict[str, float],
         sessions: dict[str, float], applied_at: float, now: float | None = None) -> tuple[KeepReport, float]:
    """Retention, tombstones, compaction, stale temporary files. -> (report, tombstones applied up to)."""
    now = now or time.time()
    report = KeepReport()
    report.temps_removed = archive.remove_stale_temps(3600, now)
    expire(archive, retention_days, rated_days, now, report)
    applied = apply_tombstones(archive, users, sessions, applied_at, report)
    compact(archive, set(users), set(sessions), now, report)
    return report, applied
