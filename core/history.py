"""One history: every reader of logged data (the learner's dataset and reward model, the
developer tools, the operator's and the users' session views) reads through `History`, which
looks in Redis (the hot window) first and then in the Parquet archive (core/archive.py).

- A record in both (a crash between the archive write and the Redis delete, or a session that
  came back to life) reads once; a session half in Redis and half in the archive reads as one.
- Stream entries (events, rewards, pairs) keep their stream ids, so a reader that pages by id
  (the learner's cursor) sees one ordered stream whether an entry is still in Redis or not.
- Tombstones are honoured: rows of forgotten users (`users:forgotten`) and deleted
  conversations (`sessions:deleted`) are never returned, even before the archive task has
  rewritten the files that hold them.

Synchronous redis-py client with decode_responses=True. Without an archive (None) it reads
Redis alone.
"""
from __future__ import annotations

from collections.abc import Iterable

import redis

from core.archive import Archive, day_of, newest_rows
from core.keys import Keys
from core.records import EventRecord, FinalReward, PairRecord, Record, ReplyRecord, RewardEntry, SessionRecord, stream_key

SCAN_CAP = 10_000  # most sessions one listing looks at


class History:
    def __init__(self, r: redis.Redis, keys: Keys, archive: Archive | None = None):
        self.r = r
        self.k = keys
        self.archive = archive

    @classmethod
    def from_settings(cls, r: redis.Redis, settings) -> History:
        """The reader of a deployment (CommonSettings: prefix and archive location)."""
        return cls(r, Keys(settings.prefix), Archive(settings.archive_location))

    # --- tombstones ---------------------------------------------------------------------------
    def tombstones(self) -> tuple[set[str], set[str]]:
        """(forgotten user ids, deleted session ids)."""
        with self.r.pipeline(transaction=False) as p:
            p.zrange(self.k.forgotten_users, 0, -1)
            p.zrange(self.k.deleted_sessions, 0, -1)
            users, sessions = p.execute()
        return set(users), set(sessions)

    def _alive(self, where=None):
        """`where` and not a tombstoned row."""
        import pyarrow.compute as pc
        users, sessions = self.tombstones()
        for column, dead in (("user_id", users), ("session_id", sessions)):
            if dead:
                keep = ~pc.field(column).isin(sorted(dead)) | pc.field(column).is_null()
                where = keep if where is None else where & keep
        return where

    def _archived(self, cls: type[Record], where=None, days: Iterable[str] | None = None, *,
                  want: set[str] | None = None, newest_first: bool = True) -> dict[str, Record]:
        """Archived records matching `where`, day by day (newest first); with `want` (ids), stops
        once all of them are found."""
        if self.archive is None:
            return {}
        where = self._alive(where)
        files = self.archive.files(cls.TABLE, days)
        by_day: dict[str, list] = {}
        for f in files:
            by_day.setdefault(f.day, []).append(f)
        out: dict[str, Record] = {}
        if cls is SessionRecord:  # every part of a session, not only the newest copy
            return session_parts(self.archive.read(cls, where=where, files=files))
        for day in sorted(by_day, reverse=newest_first):
            for row in newest_rows(self.archive.read(cls, where=where, files=by_day[day]), cls.ID):
                out.setdefault(row[cls.ID], cls.from_row(row))
            if want is not None and want <= out.keys():
                break
        return out

    # --- replies and their ledger entries -----------------------------------------------------
    def replies(self, reply_ids: Iterable[str], days: Iterable[str] | None = None) -> dict[str, ReplyRecord]:
        """reply_id -> record, for those that exist (Redis first, then the archive)."""
        ids = list(dict.fromkeys(reply_ids))
        out: dict[str, ReplyRecord] = {}
        with self.r.pipeline(transaction=False) as p:
            for rid in ids:
                p.hgetall(self.k.reply(rid))
            for rid, h in zip(ids, p.execute()):
                if h:
                    out[rid] = ReplyRecord.from_redis(h)
        return out | self._by_ids(ReplyRecord, [i for i in ids if i not in out], days)

    def texts(self, reply_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """reply_id -> (user text, reply text): what a search reads, without the token arrays."""
        ids = list(dict.fromkeys(reply_ids))
        with self.r.pipeline(transaction=False) as p:
            for rid in ids:
                p.hmget(self.k.reply(rid), "user_text", "text")
            rows = p.execute()
        out = {rid: (u or "", t or "") for rid, (u, t) in zip(ids, rows) if u is not None or t is not None}
        cold = self._by_ids(ReplyRecord, [i for i in ids if i not in out], None)
        return out | {rid: (rec.user_text or "", rec.text or "") for rid, rec in cold.items()}

    def reply(self, reply_id: str) -> ReplyRecord | None:
        return self.replies([reply_id]).get(reply_id)

    def ledger(self, reply_ids: Iterable[str], days: Iterable[str] | None = None) -> dict[str, RewardEntry]:
        """reply_id -> ledger entry with its signals (Redis first, then the archive)."""
        ids = list(dict.fromkeys(reply_ids))
        out: dict[str, RewardEntry] = {}
        with self.r.pipeline(transaction=False) as p:
            for rid in ids:
                p.hgetall(self.k.reward(rid))
                p.hgetall(self.k.reward_signals(rid))
            rows = p.execute()
        for rid, h, signals in zip(ids, rows[0::2], rows[1::2]):
            if h:
                out[rid] = RewardEntry.from_redis(h, signals=signals)
        return out | self._by_ids(RewardEntry, [i for i in ids if i not in out], days)

    def _by_ids(self, cls: type[Record], ids: list[str], days) -> dict:
        if not ids or self.archive is None:
            return {}
        import pyarrow.compute as pc
        want = set(ids)
        found = self._archived(cls, pc.field(cls.ID).isin(ids), days, want=want)
        if days is not None and not want <= found.keys():  # not where the hint said: look everywhere
            found |= self._archived(cls, pc.field(cls.ID).isin(sorted(want - found.keys())), want=want)
        return found

    # --- sessions -------------------------------------------------------------------------------
    def _hot_session(self, session_id: str) -> SessionRecord | None:
        return self._hot_sessions([session_id]).get(session_id)

    def _hot_sessions(self, session_ids: list[str]) -> dict[str, SessionRecord]:
        """The sessions still in Redis, read in one round trip (a user's list of 1,000 stays fast)."""
        with self.r.pipeline(transaction=False) as p:
            for sid in session_ids:
                p.hgetall(self.k.session_meta(sid))
                p.lrange(self.k.session(sid), 0, -1)
                p.lrange(self.k.session_replies(sid), 0, -1)
            rows = p.execute()
        out = {}
        for i, sid in enumerate(session_ids):
            meta, history, replies = rows[3 * i:3 * i + 3]
            if meta or replies:
                out[sid] = SessionRecord.from_redis(meta, session_id=sid, history=history, replies=replies)
        return out

    def session(self, session_id: str) -> SessionRecord | None:
        """The session as one record, however it is split between Redis and the archive."""
        import pyarrow.compute as pc
        hot = self._hot_session(session_id)
        cold = self._archived(SessionRecord, pc.field("session_id") == session_id).get(session_id)
        if hot is None or cold is None:
            return hot or cold
        return merge_sessions(cold, hot)

    def session_day(self, session: SessionRecord) -> list[str] | None:
        """Where the session's archived replies and ledger entries are (a hint: the reader looks
        everywhere when they are not there)."""
        return [day_of(session.last_active)] if session.last_active else None

    def sessions(self, user: str | None = None, since: float | None = None, limit: int = SCAN_CAP
                 ) -> list[SessionRecord]:
        """Sessions newest first (by creation): the hot ones and the archived ones, merged."""
        key = self.k.user_sessions(user) if user else self.k.sessions
        hot_ids = self.r.zrevrangebyscore(key, "+inf", since if since is not None else "-inf", start=0, num=limit)
        hot = self._hot_sessions(hot_ids)
        cold = {}
        if self.archive is not None:
            import pyarrow.compute as pc
            where = None
            if user:
                where = pc.field("user_id") == user
            if since is not None:
                cond = pc.field("created") >= since
                where = cond if where is None else where & cond
            cold = self._archived(SessionRecord, where)
        merged = {sid: merge_sessions(cold[sid], hot[sid]) if sid in cold and sid in hot else hot.get(sid) or cold[sid]
                  for sid in {*hot, *cold}}
        return sorted(merged.values(), key=lambda s: (s.created or 0.0, s.session_id), reverse=True)[:limit]

    def session_of_reply(self, reply_id: str) -> str | None:
        rec = self.reply(reply_id)
        return rec.session_id if rec else None

    def hot(self, table: str) -> list[Record]:
        """Every record of one table still in Redis (the hot window), for SQL over both."""
        from core.records import STREAM_TABLES, TABLES
        cls = TABLES[table]
        if table in STREAM_TABLES:
            key = {"events": self.k.events, "rewards": self.k.rewards, "pairs": self.k.pairs}[table]
            out, first = [], "-"
            while True:
                batch = self.r.xrange(key, min=first, max="+", count=5000)
                out += [cls.from_redis(f, stream_id=i) for i, f in batch]
                if len(batch) < 5000:
                    return out
                first = "(" + batch[-1][0]
        sessions = [s for sid in self.r.zrange(self.k.sessions, 0, -1) if (s := self._hot_session(sid)) is not None]
        if table == "sessions":
            return sessions
        ids = [rid for s in sessions for rid in s.replies]
        with self.r.pipeline(transaction=False) as p:
            for rid in ids:
                p.hgetall(self.k.reply(rid) if table == "replies" else self.k.reward(rid))
                if table == "ledger":
                    p.hgetall(self.k.reward_signals(rid))
            rows = p.execute()
        if table == "replies":
            return [ReplyRecord.from_redis(h) for h in rows if h]
        return [RewardEntry.from_redis(h, signals=sig) for h, sig in zip(rows[0::2], rows[1::2]) if h]

    # --- streams ----------------------------------------------------------------------------------
    def events(self, session_id: str | None = None, since: float | None = None) -> list[EventRecord]:
        """Events (feedback, derived, user messages, replies) in stream order; of one session when
        given, from `since` (epoch s) on."""
        import pyarrow.compute as pc
        start = f"{max(0, int(since * 1000) - 1000)}-0" if since else "-"
        hot, first = [], start
        while True:
            batch = self.r.xrange(self.k.events, min=first, max="+", count=1000)
            hot += [EventRecord.from_redis(f, stream_id=i) for i, f in batch
                    if session_id is None or f.get("session_id") == session_id]
            if len(batch) < 1000:
                break
            first = "(" + batch[-1][0]
        where = pc.field("session_id") == session_id if session_id else None
        days = self._days_since(EventRecord, since)
        cold = self._archived(EventRecord, where, days, newest_first=False)
        return _ordered(cold, hot)

    def _days_since(self, cls: type[Record], since: float | None) -> list[str] | None:
        if since is None or self.archive is None:
            return None
        first = day_of(max(0.0, since - 86400))
        return [d for d in self.archive.days(cls.TABLE) if d >= first]

    def rewards(self, after: str | None = None, upto: str | None = None, count: int | None = None,
                newest: bool = False) -> list[FinalReward]:
        """Final rewards with after < stream id <= upto, in stream order: the first `count` of
        them, or with newest=True the last `count`."""
        return self._stream(FinalReward, self.k.rewards, after, upto, count, newest)

    def pairs(self, after: str | None = None, count: int | None = None) -> list[PairRecord]:
        return self._stream(PairRecord, self.k.pairs, after, None, count, False)

    def _stream(self, cls, key: str, after: str | None, upto: str | None, count: int | None, newest: bool) -> list:
        lo, hi = f"({after}" if after else "-", upto or "+"
        if newest:
            hot = [cls.from_redis(f, stream_id=i) for i, f in self.r.xrevrange(key, max=hi, min=lo, count=count)][::-1]
        else:
            hot = [cls.from_redis(f, stream_id=i) for i, f in self.r.xrange(key, min=lo, max=hi, count=count)]
        if count is not None and len(hot) >= count and newest:
            return hot  # the newest ones are all in Redis (the archive only holds older entries)
        moved = self.r.get(self.k.archive_cursor(cls.TABLE))  # the newest entry the archive confirmed
        if moved is None or (after and stream_key(after) >= stream_key(moved)):
            return hot  # nothing in the range has left Redis (a crash's copies are still in Redis too)
        cold = self._archived_range(cls, after, upto, count, newest)
        rows = _ordered(cold, hot)
        if count is None:
            return rows
        return rows[-count:] if newest else rows[:count]

    def _archived_range(self, cls, after: str | None, upto: str | None, count: int | None, newest: bool) -> dict:
        """Archived stream entries in (after, upto], day by day from the right end, until `count`."""
        if self.archive is None:
            return {}
        lo, hi = (stream_key(after) if after else None), (stream_key(upto) if upto else None)
        days = [d for d in self.archive.days(cls.TABLE)
                if (lo is None or d >= day_of(lo[0] / 1000)) and (hi is None or d <= day_of(hi[0] / 1000))]
        out: dict = {}
        for day in (sorted(days, reverse=True) if newest else sorted(days)):
            for sid, rec in self._archived(cls, None, [day]).items():
                key = stream_key(sid)
                if (lo is None or key > lo) and (hi is None or key <= hi):
                    out[sid] = rec
            if count is not None and len(out) >= count:
                break
        return out

    def count_rewards_after(self, after: str | None, limit: int) -> int:
        return len(self.rewards(after=after, count=limit))


def _ordered(cold: dict, hot: list) -> list:
    """Archived and hot stream records, once each, in stream order."""
    merged = dict(cold)
    merged.update({r.stream_id: r for r in hot})
    return sorted(merged.values(), key=lambda r: stream_key(r.stream_id))


def merge_sessions(cold: SessionRecord, hot: SessionRecord) -> SessionRecord:
    """One session from an older part (archived) and a newer one (archived later, or still in
    Redis): a session the archive moved while its page stayed open came back to Redis and moved
    again. Merging a crash's identical copy changes nothing."""
    import dataclasses

    def union(a, b):
        return list(dict.fromkeys([*(a or []), *(b or [])]))
    created = [x for x in (cold.created, hot.created) if x is not None]
    active = [x for x in (cold.last_active, hot.last_active) if x is not None]
    return dataclasses.replace(
        hot, user_id=hot.user_id or cold.user_id, created=min(created) if created else None,
        last_active=max(active) if active else None, title=cold.title or hot.title,
        history=union(cold.history, hot.history), replies=union(cold.replies, hot.replies))


def session_parts(table) -> dict[str, SessionRecord]:
    """Archived session rows (a pyarrow Table with `_batch`) -> one merged record per session,
    its parts joined oldest first."""
    from core.archive import BATCH_COL
    out: dict[str, SessionRecord] = {}
    for row in sorted(table.to_pylist(), key=lambda r: r[BATCH_COL]):
        rec = SessionRecord.from_row(row)
        out[rec.session_id] = merge_sessions(out[rec.session_id], rec) if rec.session_id in out else rec
    return out

