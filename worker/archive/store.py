"""Every Redis read and write of the archive task (the one worker/archive module that talks to
Redis): what may move, snapshots of sessions, the guarded delete, stream ranges, cursors and
trims, tombstones, the status hash and Redis's memory.

Keys written here (prefix omitted): archive:cursor:{stream}, archive:status, lock:archive, and
deletions of what moved: session_meta/session/session_replies:{s}, reply/reward/
reward_signals:{r}, fb:derived:*:{r}, the sessions/user_sessions/rewards:pending index
entries, and stream entries below the archive cursor (XTRIM MINID).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from core.keys import Keys
from core.records import ReplyRecord, RewardEntry, SessionRecord, stream_key

RENEW_LOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
GROUP = "rewarders"  # worker.rewards.ledger.GROUP: the reward workers' consumer group of `events`
# the id records of events derived from one reply (each recorded at most once while it is in Redis);
# `derived:sibling:{a}>{b}` records expire by themselves (core.redis_conn.IDEMPOTENCY_TTL_S)
DERIVED_PER_REPLY = ("continuation", "abandon", "edited")

# Delete one archived session, but only if nothing changed since it was read: its last activity,
# its reply list, and each reply's ledger state and signal count (a late signal, a new turn).
# KEYS: meta, history, replies list, sessions zset, user_sessions zset, pending zset,
#       then per reply: reply, reward, signals, derived continuation, abandon and edited keys
# ARGV: session_id, last_active as read, n replies, then per reply: reply_id, state as read, n signals
# -> 1 deleted, 0 changed meanwhile (left in Redis; written again next run, read once)
DELETE_SESSION = """
if (redis.call('HGET', KEYS[1], 'last_active') or '') ~= ARGV[2] then return 0 end
if redis.call('LLEN', KEYS[3]) ~= tonumber(ARGV[3]) then return 0 end
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local k = 7 + 6 * i
  if (redis.call('HGET', KEYS[k + 1], 'state') or '') ~= ARGV[5 + 3 * i] then return 0 end
  if redis.call('HLEN', KEYS[k + 2]) ~= tonumber(ARGV[6 + 3 * i]) then return 0 end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
for i = 0, n - 1 do
  local k = 7 + 6 * i
  redis.call('DEL', KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5])
  redis.call('ZREM', KEYS[6], ARGV[4 + 3 * i])
end
return 1
"""


@dataclass(frozen=True)
class SessionSnapshot:
    """A session as read for archiving: the records, and what the guarded delete compares."""
    session: SessionRecord
    replies: dict[str, ReplyRecord]
    ledger: dict[str, RewardEntry]
    raw_last_active: str


class ArchiveRedis:
    def __init__(self, client: redis.Redis, keys: Keys):
        self.r = client  # decode_responses=True
        self.k = keys
        self._delete = client.register_script(DELETE_SESSION)

    # --- the run lock ------------------------------------------------------------------------
    def lock(self, token: str, ttl_s: float) -> bool:
        return bool(self.r.set(self.k.archive_lock, token, nx=True, px=int(ttl_s * 1000)))

    def renew(self, token: str, ttl_s: float) -> bool:
        """Extend our lock (a run that takes long keeps it; a killed run's lapses within ttl_s)."""
        return bool(self.r.eval(RENEW_LOCK, 1, self.k.archive_lock, token, int(ttl_s * 1000)))

    def unlock(self, token: str) -> None:
        from core.redis_conn import RELEASE_LOCK
        self.r.eval(RELEASE_LOCK, 1, self.k.archive_lock, token)

    # --- sessions ------------------------------------------------------------------------------
    def oldest_sessions(self, n: int) -> tuple[list[str], int]:
        """(the n oldest session ids by creation, how many sessions Redis holds)."""
        with self.r.pipeline(transaction=False) as p:
            p.zrange(self.k.sessions, 0, n - 1)
            p.zcard(self.k.sessions)
            ids, total = p.execute()
        return ids, int(total)

    def last_active(self, session_ids: list[str]) -> dict[str, str]:
        with self.r.pipeline(transaction=False) as p:
            for sid in session_ids:
                p.hget(self.k.session_meta(sid), "last_active")
            return {sid: v or "" for sid, v in zip(session_ids, p.execute())}

    def snapshots(self, session_ids: list[str]) -> list[SessionSnapshot]:
        """Everything of these sessions, in two round trips."""
        with self.r.pipeline(transaction=False) as p:
            for sid in session_ids:
                p.hgetall(self.k.session_meta(sid))
                p.lrange(self.k.session(sid), 0, -1)
                p.lrange(self.k.session_replies(sid), 0, -1)
            flat = p.execute()
        heads = [(sid, flat[3 * i], flat[3 * i + 1], flat[3 * i + 2]) for i, sid in enumerate(session_ids)]
        with self.r.pipeline(transaction=False) as p:
            for _, _, _, rids in heads:
                for rid in rids:
                    p.hgetall(self.k.reply(rid))
                    p.hgetall(self.k.reward(rid))
                    p.hgetall(self.k.reward_signals(rid))
            rows = iter(p.execute())
        out = []
        for sid, meta, history, rids in heads:
            replies, ledger = {}, {}
            for rid in rids:
                reply, entry, signals = next(rows), next(rows), next(rows)
                if reply:
                    replies[rid] = ReplyRecord.from_redis(reply)
                if entry:
                    ledger[rid] = RewardEntry.from_redis(entry, signals=signals)
            session = SessionRecord.from_redis(meta, session_id=sid, history=history, replies=rids)
            out.append(SessionSnapshot(session, replies, ledger, meta.get("last_active", "")))
        return out

    def delete_session(self, snap: SessionSnapshot) -> bool:
        s = snap.session
        keys = [self.k.session_meta(s.session_id), self.k.session(s.session_id), self.k.session_replies(s.session_id),
                self.k.sessions, self.k.user_sessions(s.user_id or ""), self.k.rewards_pending]
        args = [s.session_id, snap.raw_last_active, len(s.replies)]
        for rid in s.replies:
            keys += [self.k.reply(rid), self.k.reward(rid), self.k.reward_signals(rid),
                     *(self.k.feedback_id(f"derived:{kind}:{rid}") for kind in DERIVED_PER_REPLY)]
            entry = snap.ledger.get(rid)
            args += [rid, (entry.state or "") if entry else "", len(entry.signals or {}) if entry else 0]
        return bool(self._delete(keys=keys, args=args))

    # --- streams --------------------------------------------------------------------------------
    def stream_key(self, stream: str) -> str:
        return {"events": self.k.events, "rewards": self.k.rewards, "pairs": self.k.pairs}[stream]

    def cursor(self, stream: str) -> str | None:
        return self.r.get(self.k.archive_cursor(stream))

    def read_after(self, stream: str, after: str | None, count: int) -> list[tuple[str, dict]]:
        return self.r.xrange(self.stream_key(stream), min=f"({after}" if after else "-", max="+", count=count)

    def length(self, stream: str) -> int:
        return int(self.r.xlen(self.stream_key(stream)))

    def consumed_bound(self) -> tuple[tuple[int, int], bool] | None:
        """The newest events entry the reward workers are done with: (stream key, inclusive).
        None: no consumer group yet (nothing is processed, nothing may move)."""
        try:
            groups = self.r.xinfo_groups(self.k.events)
        except redis.ResponseError:  # no stream yet
            return None
        group = next((g for g in groups if g["name"] == GROUP), None)
        if group is None:
            return None
        bound = (stream_key(group["last-delivered-id"]), True)
        if int(group["pending"]):
            first = self.r.xpending(self.k.events, GROUP)["min"]
            bound = min(bound, (stream_key(first), False))
        return bound

    def folded_bound(self, stream: str) -> tuple[tuple[int, int], bool] | None:
        """The ops monitor's cursor of `stream` (folded into the series), if it runs."""
        if stream not in ("events", "rewards"):
            return None
        v = self.r.get(self.k.ops_cursor(stream))
        return (stream_key(v), True) if v else None

    def confirm(self, stream: str, last_id: str) -> int:
        """The archive holds every entry up to `last_id`: move the cursor, then trim below it."""
        ms, _, seq = last_id.partition("-")
        self.r.set(self.k.archive_cursor(stream), last_id)
        return int(self.r.xtrim(self.stream_key(stream), minid=f"{ms}-{int(seq or 0) + 1}", approximate=False))

    # --- tombstones, status, memory ---------------------------------------------------------------
    def tombstones(self) -> tuple[dict[str, float], dict[str, float]]:
        """({forgotten user: when}, {deleted session: when})."""
        with self.r.pipeline(transaction=False) as p:
            p.zrange(self.k.forgotten_users, 0, -1, withscores=True)
            p.zrange(self.k.deleted_sessions, 0, -1, withscores=True)
            users, sessions = p.execute()
        return dict(users), dict(sessions)

    def status(self) -> dict[str, str]:
        return self.r.hgetall(self.k.archive_status)

    def set_status(self, fields: dict, counts: dict[str, int] | None = None, clear: tuple[str, ...] = ()) -> None:
        with self.r.pipeline(transaction=True) as p:
            if clear:
                p.hdel(self.k.archive_status, *clear)
            p.hset(self.k.archive_status, mapping={k: v if isinstance(v, str) else repr(v) for k, v in fields.items()})
            for name, n in (counts or {}).items():
                if n:
                    p.hincrby(self.k.archive_status, f"total_{name}", n)
            p.execute()

    def memory(self) -> dict[str, int]:
        """Redis's used_memory and maxmemory (0: no limit set)."""
        info = self.r.info("memory")
        return {"used": int(info.get("used_memory", 0)), "max": int(info.get("maxmemory", 0))}


def now_ms(now: float | None = None) -> int:
    return int((now if now is not None else time.time()) * 1000)
