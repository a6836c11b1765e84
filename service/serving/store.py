"""Everything the server writes to and reads from Redis (the only service module that
talks to Redis). One writer per key: the server owns sessions, replies and events."""
from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.keys import Keys
from core.records import ReplyRecord
from core.redis_conn import IDEMPOTENCY_TTL_S, RECORD_ONCE, flat_fields, record_once_call, record_once_results
from service.serving.branches import Node, node_from_fields
from service.serving.group_commit import GroupCommit

# A reply that ends while Redis is away (restarting, failing over) waits this long for it
# before the turn fails: the reply is generated already and worth logging.
REPLY_SAVE_WAIT_S = 10.0


@dataclass(frozen=True)
class SessionMeta:
    session_id: str
    user_id: str
    created: float
    last_active: float


# KEYS: the hash; ARGV: field, value. Set only on a hash that still exists (never recreate a
# reply the archive moved or a user's forget removed).
HSET_IF_EXISTS = """
if redis.call('exists', KEYS[1]) == 1 then redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) return 1 end
return 0
"""

def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


_event_ids = random.Random(secrets.randbits(128))
os.register_at_fork(after_in_child=lambda: _event_ids.seed(secrets.randbits(128)))  # no shared sequence


def new_event_id() -> str:
    """Unique, not secret (nothing is authorised by it): a seeded generator instead of an
    os.urandom call per feedback, which showed up at thousands of events per second."""
    return f"ev_{_event_ids.getrandbits(80):020x}"


class ChatStore:
    def __init__(self, redis: aredis.Redis, keys: Keys, feedback_id_ttl_s: float = 3600.0):
        self.r = redis
        self.k = keys
        self.feedback_id_ttl_s = feedback_id_ttl_s  # REWARDLOOP_HOT_FEEDBACK_ID_S
        self._record_once = redis.register_script(RECORD_ONCE)
        self._hset_if_exists = redis.register_script(HSET_IF_EXISTS)
        self._events = GroupCommit(self._record_many)

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    # --- sessions -------------------------------------------------------------------
    async def create_session(self, user_id: str, now: float | None = None) -> SessionMeta:
        now = now or time.time()
        sid = new_id("s")
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self.k.session_meta(sid), mapping={"user_id": user_id, "created": now, "last_active": now})
            p.zadd(self.k.sessions, {sid: now})
            p.zadd(self.k.user_sessions(user_id), {sid: now})
            await p.execute()
        return SessionMeta(sid, user_id, now, now)

    async def session_meta(self, session_id: str) -> SessionMeta | None:
        h = await self.r.hgetall(self.k.session_meta(session_id))
        if not h:
            return None
        return SessionMeta(session_id, h[b"user_id"].decode(), float(h[b"created"]), float(h[b"last_active"]))

    async def history(self, session_id: str) -> list[tuple[str, str, str]]:
        """[(reply_id, user_text, reply_text)] of the turns that form the conversation."""
        ids = [i.decode() for i in await self.r.lrange(self.k.session(session_id), 0, -1)]
        if not ids:
            return []
        async with self.r.pipeline(transaction=False) as p:
            for rid in ids:
                p.hmget(self.k.reply(rid), "user_text", "text")
            rows = await p.execute()
        return [(rid, (u or b"").decode(), (a or b"").decode()) for rid, (u, a) in zip(ids, rows)]

    async def set_history_turn(self, session_id: str, index: int, reply_id: str) -> None:
        """Make `reply_id` the session's answer at turn `index` (a chosen candidate, a regeneration)."""
        await self.r.lset(self.k.session(session_id), index, reply_id)

    # --- branches (service/serving/branches.py) -----------------------------------------
    async def tree(self, session_id: str) -> dict[str, Node]:
        """Every reply of the session as a node of the conversation tree, in generation order."""
        async with self.r.pipeline(transaction=False) as p:
            p.lrange(self.k.session_replies(session_id), 0, -1)
            p.lrange(self.k.session(session_id), 0, -1)
            ids, history = await p.execute()
        ids, history = [i.decode() for i in ids], [i.decode() for i in history]
        async with self.r.pipeline(transaction=False) as p:
            for rid in ids:
                p.hmget(self.k.reply(rid), "parent_id", "client_msg_id", "candidates", "turn")
            rows = await p.execute()
        dec = [[v.decode() if v is not None else None for v in row] for row in rows]
        return {rid: node_from_fields(rid, *row, history) for rid, row in zip(ids, dec)}

    async def turns(self, reply_ids: list[str]) -> list[tuple[str, str, str]]:
        """[(reply_id, user_text, reply_text)] of these replies (a branch), in order."""
        async with self.r.pipeline(transaction=False) as p:
            for rid in reply_ids:
                p.hmget(self.k.reply(rid), "user_text", "text")
            rows = await p.execute()
        return [(rid, (u or b"").decode(), (a or b"").decode()) for rid, (u, a) in zip(reply_ids, rows)]

    async def set_branch(self, session_id: str, reply_ids: list[str]) -> None:
        """The branch ending at the last of `reply_ids` is the session's conversation now."""
        async with self.r.pipeline(transaction=True) as p:
            p.delete(self.k.session(session_id))
            if reply_ids:
                p.rpush(self.k.session(session_id), *reply_ids)
            await p.execute()

    async def set_feedback_state(self, session_id: str, state: dict[tuple[str, str], object]) -> None:
        """{(reply_id, kind): value}: what the page shows pressed after a reload, as fields
        `fb:{reply_id}:{kind}` of the session's meta hash (archived and deleted with it)."""
        await self.r.hset(self.k.session_meta(session_id),
                          mapping={f"fb:{rid}:{kind}": json.dumps(v) for (rid, kind), v in state.items()})

    async def set_title_once(self, session_id: str, title: str) -> bool:
        """The conversation's title from its first message (a rename later wins)."""
        return bool(await self.r.hsetnx(self.k.session_meta(session_id), "title", title))

    # --- replies --------------------------------------------------------------------
    async def save_reply(self, record: ReplyRecord, in_history: bool, history_index: int | None = None,
                         wait_s: float = REPLY_SAVE_WAIT_S, branch: list[str] | None = None) -> str:
        """Write the reply hash, link it to its session, and append a `reply` event, atomically.
        With `branch` (the reply ids before it), a reply in the history makes that branch plus
        itself the session's conversation.
        While Redis does not answer, retry for up to `wait_s`; a transaction whose answer was
        lost may have been applied, so a retry first checks for the reply hash (never twice)."""
        deadline, pause, retry = time.monotonic() + wait_s, 0.1, False
        while True:
            try:
                if retry and await self.r.exists(self.k.reply(record.reply_id)):
                    return record.reply_id
                return await self._save_reply(record, in_history, history_index, branch)
            except (RedisConnectionError, RedisTimeoutError):
                if time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                pause, retry = min(pause * 2, 1.0), True

    async def _save_reply(self, record: ReplyRecord, in_history: bool, history_index: int | None,
                          branch: list[str] | None = None) -> str:
        rid, sid = record.reply_id, record.session_id
        now = time.time()
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self.k.reply(rid), mapping=record.to_redis())
            p.rpush(self.k.session_replies(sid), rid)
            if in_history and branch is not None:
                p.delete(self.k.session(sid))
                p.rpush(self.k.session(sid), *branch, rid)
            elif in_history:
                if history_index is None:
                    p.rpush(self.k.session(sid), rid)
                else:
                    p.lset(self.k.session(sid), history_index, rid)
            p.hset(self.k.session_meta(sid), "last_active", now)
            # a session the archive moved while its page stayed open comes back as a whole session
            # (the archive moves it again later; readers join both parts): never a meta without owner
            p.hsetnx(self.k.session_meta(sid), "user_id", record.user_id)
            p.hsetnx(self.k.session_meta(sid), "created", now)
            p.zadd(self.k.sessions, {sid: now}, nx=True)
            p.zadd(self.k.user_sessions(record.user_id), {sid: now}, nx=True)
            p.xadd(self.k.events, {"kind": "reply", "reply_id": rid, "session_id": sid,
                                   "user_id": record.user_id, "adapter_version": record.adapter_version,
                                   "server_time": repr(now)})
            await p.execute()
        return rid

    async def set_quality(self, reply_id: str, quality: dict) -> bool:
        """Complete a saved reply's `quality` field (relevance and fluency, scored after the reply
        ended); a reply already archived or forgotten is left alone (False)."""
        return bool(await self._hset_if_exists(keys=[self.k.reply(reply_id)], args=["quality", json.dumps(quality)]))

    async def reply(self, reply_id: str) -> dict | None:
        h = await self.r.hgetall(self.k.reply(reply_id))
        return {k.decode(): v.decode() for k, v in h.items()} if h else None

    async def reply_fields(self, reply_id: str, *names: str) -> list[str | None]:
        vals = await self.r.hmget(self.k.reply(reply_id), *names)
        return [v.decode() if v is not None else None for v in vals]

    # --- events ---------------------------------------------------------------------
    async def add_event(self, fields: dict) -> str:
        return (await self.r.xadd(self.k.events, dict(zip(*[iter(flat_fields(fields))] * 2)))).decode()

    def submit_once(self, idempotency_key: str, fields: dict) -> asyncio.Future:
        """Queue an idempotent event append now; the future gives (True, stream id) when
        stored, (False, first stream id) for a repeat. Concurrent appends share one call."""
        return self._events.submit((idempotency_key, fields))

    async def record_once(self, idempotency_key: str, fields: dict) -> tuple[bool, str]:
        return await self.submit_once(idempotency_key, fields)

    async def _record_many(self, items) -> list[tuple[bool, str]]:
        # a user's feedback id is remembered for the hot window; a derived event's for as long as its
        # reply is in Redis (the archive deletes that record with the reply)
        ttls = [IDEMPOTENCY_TTL_S if key.startswith("derived:") else self.feedback_id_ttl_s for key, _ in items]
        keys, args = record_once_call(self.k.events, [(self.k.feedback_id(key), flat_fields(fields))
                                                      for key, fields in items], ttls)
        return record_once_results(await self._record_once(keys=keys, args=args))
