"""The Parquet archive: where finished records live once they leave Redis. File I/O only.

Layout (one table per record kind, core/records.py; hive-style partitions DuckDB reads as is):

    {root}/{table}/day=YYYY-MM-DD/rated={0|1}/{batch}.parquet

`day` is the UTC day of the data (a stream entry's id time; a session's last activity for
sessions, replies and ledger entries), `rated=1` holds records with explicit feedback (thumbs,
rating, choose), kept longer (REWARDLOOP_RETENTION_RATED_DAYS). `batch` sorts by write time;
every row also carries it in `_batch`, and when one id appears in several files (a crash
between a write and the Redis delete writes it again) readers keep the row of the newest batch.

A file is written under a temporary name (`.{batch}.parquet.tmp`, which readers skip), flushed
and fsynced, then renamed into place and the folder fsynced: a reader, or a crash, sees the
whole file or none of it. `root` is a local folder or any fsspec URL (s3://, gs://, memory://;
`pip install 'rewardloop[archive]'` plus the filesystem's own package): object stores make
the final write atomic themselves. The one writer is worker/archive/ (the beat task).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from core.records import TABLES, Record

_PART = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")
BATCH_COL = "_batch"
COMPRESSION = "zstd"


@dataclass(frozen=True)
class ArchiveFile:
    path: str
    table: str
    day: str
    rated: bool
    batch: str
    size: int


def new_batch(now: float | None = None) -> str:
    """A file name that sorts by write time (ns) and never collides."""
    return f"{int((now or time.time()) * 1e9):020d}-{secrets.token_hex(4)}"


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


class _Local:
    """A local folder: real fsync and rename."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.fs = None  # pyarrow's default local filesystem

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def write_atomic(self, path: str, write: Callable, before_rename: Callable[[], None]) -> int:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, "." + os.path.basename(path) + ".tmp")
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            before_rename()
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself is durable
        finally:
            os.close(fd)
        return os.path.getsize(path)

    def listdir(self, path: str) -> list[tuple[str, bool, int, float]]:
        """(name, is_dir, size, mtime) of a folder's entries; [] when it does not exist."""
        try:
            with os.scandir(path) as it:
                return [(e.name, e.is_dir(), e.stat().st_size, e.stat().st_mtime) for e in it]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def rmdir_empty(self, path: str) -> None:
        try:
            os.rmdir(path)
        except OSError:
            pass


class _Fsspec:
    """Any fsspec filesystem (object stores: the final write is atomic by itself)."""

    def __init__(self, url: str):
        try:
            import fsspec
        except ImportError:
            raise RuntimeError(f"archive URL {url!r} needs fsspec: pip install 'rewardloop[archive]' (and s3fs "
                               "or gcsfs for s3:// or gs://)") from None
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def write_atomic(self, path: str, write: Callable, before_rename: Callable[[], None]) -> int:
        folder = path.rsplit("/", 1)[0]
        self.fs.makedirs(folder, exist_ok=True)
        tmp = folder + "/." + path.rsplit("/", 1)[1] + ".tmp"
        with self.fs.open(tmp, "wb") as f:
            write(f)
        before_rename()
        self.fs.mv(tmp, path)
        return int(self.fs.size(path))

    def listdir(self, path: str) -> list[tuple[str, bool, int, float]]:
        try:
            entries = self.fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for e in entries:
            name = e["name"].rstrip("/").rsplit("/", 1)[-1]
            mtime = e.get("mtime") or e.get("LastModified") or e.get("created") or 0
            out.append((name, e["type"] == "directory", int(e.get("size") or 0),
                        mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime)))
        return out

    def remove(self, path: str) -> None:
        try:
            self.fs.rm(path)
        except FileNotFoundError:
            pass

    def rmdir_empty(self, path: str) -> None:
        try:
            if not self.fs.ls(path):
                self.fs.rmdir(path)
        except (OSError, ValueError):
            pass


class Archive:
    """Write and read the archive at `url` (a folder, or an fsspec URL)."""

    def __init__(self, url: str | Path, hook: Callable[[str], None] | None = None):
        url = str(url)
        self.url = url
        self.io = _Fsspec(url) if "://" in url and not url.startswith("file://") else _Local(url.removeprefix("file://"))
        self.hook = hook or (lambda point: None)  # fault injection for the crash tests (worker/archive)

    # --- writing (worker/archive is the one caller) ----------------------------------------
    def write(self, cls: type[Record], rows: Iterable[Record], *, day: str, rated: bool, batch: str) -> ArchiveFile:
        """One file of `rows` in partition (day, rated), atomically."""
        import pyarrow as pa
        schema = cls.arrow_schema().append(pa.field(BATCH_COL, pa.string()))
        data = [dict(r.to_row(), **{BATCH_COL: batch}) for r in rows]
        return self.write_arrow(cls.TABLE, pa.Table.from_pylist(data, schema=schema), day=day, rated=rated,
                                batch=batch)

    def write_arrow(self, table: str, data, *, day: str, rated: bool, batch: str) -> ArchiveFile:
        import pyarrow.parquet as pq
        path = self.io.join(table, f"day={day}", f"rated={int(rated)}", f"{batch}.parquet")
        size = self.io.write_atomic(path, lambda f: pq.write_table(data, f, compression=COMPRESSION),
                                    lambda: self.hook("before_rename"))
        return ArchiveFile(path, table, day, rated, batch, size)

    def remove(self, files: Iterable[ArchiveFile]) -> None:
        folders = set()
        for f in files:
            self.io.remove(f.path)
            folders.add(f.path.rsplit("/", 1)[0])
        for folder in folders:  # an emptied partition goes too (then its day folder)
            self.io.rmdir_empty(folder)
            self.io.rmdir_empty(folder.rsplit("/", 1)[0])

    def remove_stale_temps(self, older_than_s: float, now: float | None = None) -> int:
        """Temporary files a crash left behind (readers never see them)."""
        now, gone = now or time.time(), 0
        for table in TABLES:
            for day_dir in self._dirs(self.io.join(table), _PART):
                for rated in ("rated=0", "rated=1"):
                    folder = self.io.join(table, day_dir, rated)
                    for name, is_dir, _, mtime in self.io.listdir(folder):
                        if not is_dir and name.endswith(".tmp") and now - mtime > older_than_s:
                            self.io.remove(folder + "/" + name)
                            gone += 1
        return gone

    # --- reading ------------------------------------------------------------------------------
    def _dirs(self, path: str, pattern: re.Pattern) -> list[str]:
        return sorted(name for name, is_dir, _, _ in self.io.listdir(path) if is_dir and pattern.match(name))

    def files(self, table: str, days: Iterable[str] | None = None) -> list[ArchiveFile]:
        """The table's files, oldest batch first; only the given days when `days` is set."""
        wanted = set(days) if days is not None else None
        out = []
        for day_dir in self._dirs(self.io.join(table), _PART):
            day = _PART.match(day_dir).group(1)
            if wanted is not None and day not in wanted:
                continue
            for rated in (0, 1):
                folder = self.io.join(table, day_dir, f"rated={rated}")
                for name, is_dir, size, _ in self.io.listdir(folder):
                    if not is_dir and name.endswith(".parquet") and not name.startswith("."):
                        out.append(ArchiveFile(folder + "/" + name, table, day, bool(rated), name[:-8], size))
        return sorted(out, key=lambda f: f.batch)

    def days(self, table: str) -> list[str]:
        return [_PART.match(d).group(1) for d in self._dirs(self.io.join(table), _PART)]

    def read(self, cls: type[Record], *, where=None, columns: list[str] | None = None,
             files: list[ArchiveFile] | None = None):
        """A pyarrow Table of the matching rows of every file (duplicates not yet dropped), with
        `_batch`; columns missing from older files read as nulls."""
        import pyarrow as pa
        import pyarrow.dataset as ds
        files = self.files(cls.TABLE) if files is None else files
        schema = cls.arrow_schema().append(pa.field(BATCH_COL, pa.string()))
        if columns is not None:
            columns = list(dict.fromkeys([*columns, cls.ID, BATCH_COL]))
        if not files:
            return schema.empty_table().select(columns) if columns else schema.empty_table()
        data = ds.dataset([f.path for f in files], schema=schema, format="parquet", filesystem=self.io.fs)
        return data.to_table(filter=where, columns=columns)

    def records(self, cls: type[Record], *, where=None, files: list[ArchiveFile] | None = None) -> dict[str, Record]:
        """id -> record, newest batch of each id."""
        return {row[cls.ID]: cls.from_row(row) for row in newest_rows(self.read(cls, where=where, files=files), cls.ID)}

    def usage(self) -> dict:
        out = {}
        for table in TABLES:
            files = self.files(table)
            out[table] = {"files": len(files), "bytes": sum(f.size for f in files),
                          "days": len({f.day for f in files})}
        return out

    def describe(self) -> str:
        return json.dumps({"url": self.url, **self.usage()})


def newest_rows(table, id_col: str) -> list[dict]:
    """Rows of a pyarrow Table, one per id (the newest `_batch`), in first-seen order."""
    best: dict[str, dict] = {}
    for row in table.to_pylist():
        old = best.get(row[id_col])
        if old is None or row[BATCH_COL] > old[BATCH_COL]:
            best[row[id_col]] = row
    return list(best.values())
