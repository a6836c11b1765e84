"""`rewardloop sessions query "SELECT ..."`: SQL (DuckDB) over the archive and the hot window.

Each table of the archive (core/records.py: replies, sessions, events, ledger, rewards, pairs)
is a view: the archive's Parquet files together with what Redis still holds, one row per id
(the newest copy), without the rows of forgotten users and deleted conversations. `feedback` is
the events users sent (thumbs, rating, choose, copy, regenerate, dwell, reasons). Columns are the
records' fields (`rewardloop sessions query --schema`); list-valued JSON fields (components,
tags, params) are JSON text: read them with DuckDB's JSON functions.

DuckDB is an optional dependency: `pip install 'rewardloop[query]'`.
"""
from __future__ import annotations

from core.archive import BATCH_COL, Archive
from core.history import History
from core.records import TABLES, SessionRecord

FEEDBACK_KINDS = ("thumbs", "rating", "choose", "copy", "regenerate", "dwell", "reasons")
HOT_BATCH = "~hot"  # sorts after every archive batch: Redis's copy of a record is the newest

# The documented examples (docs/developers.md shows the same text; a test runs each one).
EXAMPLES = {
    "reward by version and day": (
        "SELECT adapter_version, strftime(to_timestamp(finalized_at), '%Y-%m-%d') AS day, count(*) AS replies, "
        "round(avg(reward), 3) AS mean_reward FROM rewards WHERE state = 'rewarded' "
        "GROUP BY ALL ORDER BY day, adapter_version"),
    "feedback by kind": (
        "SELECT kind, count(*) AS events, count(DISTINCT user_id) AS users FROM feedback GROUP BY kind ORDER BY events DESC"),
    "feedback tags": (
        "SELECT tag, count(*) AS times FROM feedback, unnest(from_json(tags, '[\"VARCHAR\"]')) AS t(tag) "
        "WHERE tags IS NOT NULL GROUP BY tag ORDER BY times DESC"),
    "dwell distribution": (
        "SELECT adapter_version, count(*) AS n, "
        "round(quantile_cont(CAST(value AS DOUBLE) / 1000, 0.1), 1) AS p10_s, "
        "round(quantile_cont(CAST(value AS DOUBLE) / 1000, 0.5), 1) AS median_s, "
        "round(quantile_cont(CAST(value AS DOUBLE) / 1000, 0.9), 1) AS p90_s "
        "FROM feedback WHERE kind = 'dwell' GROUP BY adapter_version ORDER BY adapter_version"),
    "replies and tokens per day": (
        "SELECT strftime(to_timestamp(ended_at), '%Y-%m-%d') AS day, count(*) AS replies, sum(n_tokens) AS tokens, "
        "round(avg(len(token_ids)), 1) AS mean_tokens FROM replies GROUP BY day ORDER BY day"),
}


class QueryError(RuntimeError):
    pass


def _duckdb():
    try:
        import duckdb
    except ImportError:
        raise QueryError("`sessions query` needs DuckDB: pip install 'rewardloop[query]' (or pip install duckdb)") \
            from None
    return duckdb


def connect(history: History, archive: Archive):
    """A DuckDB connection with one view per table (archive + hot window, newest copy of each id,
    tombstones applied) and the `feedback` view."""
    import pyarrow as pa
    duckdb = _duckdb()
    con = duckdb.connect()
    users, sessions = history.tombstones()
    con.register("tomb_users", pa.table({"id": pa.array(sorted(users), pa.string())}))
    con.register("tomb_sessions", pa.table({"id": pa.array(sorted(sessions), pa.string())}))
    for table, cls in TABLES.items():
        schema = cls.arrow_schema().append(pa.field(BATCH_COL, pa.string()))
        if cls is SessionRecord:  # a session's parts (archived, archived again, in Redis) join into one row
            merged = [dict(s.to_row(), **{BATCH_COL: HOT_BATCH}) for s in history.sessions(limit=10 ** 9)]
            con.register("hot_sessions", pa.Table.from_pylist(merged, schema=schema))
            con.execute(f"CREATE VIEW sessions AS SELECT * EXCLUDE ({BATCH_COL}) FROM hot_sessions")
            continue
        hot = [dict(r.to_row(), **{BATCH_COL: HOT_BATCH}) for r in history.hot(table)]
        con.register(f"hot_{table}", pa.Table.from_pylist(hot, schema=schema))
        files = archive.files(table)
        if files and archive.io.fs is None:  # a local folder: DuckDB reads the files itself
            paths = ", ".join("'" + f.path.replace("'", "''") + "'" for f in files)
            cold = f"SELECT * FROM read_parquet([{paths}], union_by_name = true, hive_partitioning = false)"
        else:  # an object store through fsspec: pyarrow reads them
            con.register(f"cold_{table}", archive.read(cls, files=files))
            cold = f"SELECT * FROM cold_{table}"
        keep = ["NOT EXISTS (SELECT 1 FROM tomb_users WHERE id = x.user_id)"]
        if "session_id" in schema.names:
            keep.append("NOT EXISTS (SELECT 1 FROM tomb_sessions WHERE id = x.session_id)")
        con.execute(f"""CREATE VIEW {table} AS SELECT * EXCLUDE ({BATCH_COL}, _n) FROM (
            SELECT *, row_number() OVER (PARTITION BY {cls.ID} ORDER BY {BATCH_COL} DESC) AS _n
            FROM ({cold} UNION ALL BY NAME SELECT * FROM hot_{table}) AS x WHERE {' AND '.join(keep)}) WHERE _n = 1""")
    kinds = ", ".join(f"'{k}'" for k in FEEDBACK_KINDS)
    con.execute(f"CREATE VIEW feedback AS SELECT * FROM events WHERE kind IN ({kinds})")
    return con


def run(history: History, archive: Archive, sql: str) -> tuple[list[str], list[tuple]]:
    """(column names, rows) of `sql`."""
    con = connect(history, archive)
    try:
        cur = con.execute(sql)
    except Exception as exc:  # DuckDB's own errors name the table or column: pass them on
        raise QueryError(f"{type(exc).__name__}: {exc}") from None
    return [d[0] for d in cur.description], cur.fetchall()


def schema_text() -> str:
    lines = []
    for table, cls in TABLES.items():
        lines.append(f"{table} (one row per {cls.ID}; schema version {cls.SCHEMA_VERSION})")
        lines += [f"  {f.name:<20} {f.metadata['kind']:<6} {f.metadata['help']}" for f in cls.columns()]
        lines.append(f"  {'extra':<20} {'json':<6} fields the record does not name, as stored")
    lines.append("feedback: the events whose kind is one of " + ", ".join(FEEDBACK_KINDS))
    return "\n".join(lines)
