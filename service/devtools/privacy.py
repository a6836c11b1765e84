"""Forgetting a user and opting out of learning: the privacy writes to Redis.

`forget_user` removes everything the deployment holds about one user: sessions (meta, turn
lists, index entries), replies, feedback and derived events (XDEL from the events stream, and
XACK so the workers' group holds nothing of theirs), ledger entries, signals, pending-reward
entries, entries of the rewards and pairs streams, dead letters about their replies,
idempotency records, votes and user flags. It finds them through the indexes (the user's
session set, each session's reply list) and also by SCANning the prefix's reply, session and
ledger keys and reading whole streams, so data an index lost is found too. It never touches
another user's keys or entries: every deletion is decided by a user id or by a reply or
session id that belongs to the user.

It then writes a tombstone: `user:{id}` keeps only `forgotten=<time>` (the learner's dataset
builder and every export skip such users, so anything the user still sends later is served
but never learned from) and `users:forgotten` lists who was forgotten and when.
Tokens are signed, not stored: a forgotten user's token keeps working for chat until it expires.

`forget_session` does the same for one conversation its user deleted (the chat page's delete,
DELETE /api/sessions/{id}) and lists it in `sessions:deleted` (the archive honours it too); the user stays.

`opt_out` sets `user:{id}` opt_out=1: the user is still served, but their replies are never
used for learning or export.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis

from core.keys import Keys

GROUP = "rewarders"  # worker.ledger.GROUP (not imported: the service does not depend on worker/)


@dataclass
class ForgetReport:
    user_id: str
    sessions: int = 0
    replies: int = 0
    keys_deleted: int = 0
    stream_entries: dict = field(default_factory=dict)  # stream name -> entries deleted

    def as_dict(self) -> dict:
        return {"user_id": self.user_id, "sessions": self.sessions, "replies": self.replies,
                "keys_deleted": self.keys_deleted, "stream_entries": dict(self.stream_entries)}


def _scan_owned(r: redis.Redis, pattern: str, field_name: str, user_id: str, strip: str) -> set[str]:
    """Ids (key minus `strip`) of hashes matching `pattern` whose `field_name` is `user_id`."""
    found: set[str] = set()
    batch: list[str] = []

    def flush():
        with r.pipeline(transaction=False) as p:
            for k in batch:
                p.hget(k, field_name)
            for k, owner in zip(batch, p.execute()):
                if owner == user_id:
                    found.add(k[len(strip):])
        batch.clear()
    for key in r.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            flush()
    if batch:
        flush()
    return found


def _stream_ids(r: redis.Redis, stream: str, owned, feedback_ids: list | None = None) -> list[str]:
    """Ids of the stream's entries for which owned(fields) is true (reads the whole stream)."""
    out, start = [], "-"
    while True:
        batch = r.xrange(stream, min=start, max="+", count=2000)
        mine = [(i, f) for i, f in batch if owned(f)]
        out += [i for i, _ in mine]
        if feedback_ids is not None:
            feedback_ids += [f["feedback_id"] for _, f in mine if f.get("feedback_id")]
        if len(batch) < 2000:
            return out
        start = "(" + batch[-1][0]


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def forget_user(r: redis.Redis, keys: Keys, user_id: str, now: float | None = None) -> ForgetReport:
    """Delete all of the user's data (see the module docstring) and leave a tombstone."""
    if not user_id:
        raise ValueError("user id must not be empty")
    rep = ForgetReport(user_id)
    k = keys
    sessions = set(r.zrange(k.user_sessions(user_id), 0, -1))
    sessions |= _scan_owned(r, k.session_meta("*"), "user_id", user_id, k.session_meta(""))
    replies = _scan_owned(r, k.reply("*"), "user_id", user_id, k.reply(""))
    replies |= _scan_owned(r, k.reward("*"), "user_id", user_id, k.reward(""))
    by_session = _replies_of(r, k, sessions)
    for rids in by_session.values():
        replies |= rids
    rep.sessions, rep.replies = len(sessions), len(replies)

    def owned(f: dict) -> bool:
        return (f.get("user_id") == user_id or f.get("reply_id") in replies or f.get("session_id") in sessions
                or f.get("chosen_id") in replies or f.get("rejected_id") in replies)

    rep.stream_entries = _delete_stream_entries(r, k, owned)
    doomed = [k.user(user_id), k.user_votes(user_id), k.user_positives(user_id), k.user_sessions(user_id),
              k.session_titles(user_id)]
    doomed += _session_keys(k, by_session, replies)
    doomed += list(r.scan_iter(match=k.feedback_id(_glob_escape(user_id) + ":*"), count=1000))
    now = now or time.time()
    with r.pipeline(transaction=True) as p:
        n_deletes = _delete_keys(p, doomed)
        if sessions:
            p.zrem(k.sessions, *sessions)
        if replies:
            p.zrem(k.rewards_pending, *replies)
        p.zrem(k.flagged_users, user_id)
        p.hset(k.user(user_id), mapping={"forgotten": repr(now)})
        p.zadd(k.forgotten_users, {user_id: now})
        results = p.execute()
    rep.keys_deleted = sum(int(x) for x in results[:n_deletes])
    return rep


def forget_session(r: redis.Redis, keys: Keys, session_id: str, user_id: str, now: float | None = None) -> ForgetReport:
    """A user deleted one conversation: remove it as `forget_user` removes a user's data (session,
    replies, their feedback and derived events, ledger entries, rewards and pairs, idempotency
    records), so no later training set, export or replay sees it, and list it in
    `sessions:deleted` (the archive honours it too). The user's other conversations and flags stay."""
    if not session_id or not user_id:
        raise ValueError("session id and user id must not be empty")
    k = keys
    rep = ForgetReport(user_id, sessions=1)
    by_session = _replies_of(r, k, {session_id})
    replies = by_session[session_id]
    rep.replies = len(replies)

    def owned(f: dict) -> bool:
        return (f.get("session_id") == session_id or f.get("reply_id") in replies
                or f.get("chosen_id") in replies or f.get("rejected_id") in replies)

    fids: list[str] = []
    rep.stream_entries = _delete_stream_entries(r, k, owned, fids)
    doomed = _session_keys(k, by_session, replies) + [k.feedback_id(f"{user_id}:{f}") for f in fids]
    now = now or time.time()
    with r.pipeline(transaction=True) as p:
        n_deletes = _delete_keys(p, doomed)
        p.zrem(k.sessions, session_id)
        p.zrem(k.user_sessions(user_id), session_id)
        p.hdel(k.session_titles(user_id), session_id)
        if replies:
            p.zrem(k.rewards_pending, *replies)
        p.zadd(k.deleted_sessions, {session_id: now})
        results = p.execute()
    rep.keys_deleted = sum(int(x) for x in results[:n_deletes])
    return rep


def _replies_of(r: redis.Redis, k: Keys, sessions: set[str]) -> dict[str, set[str]]:
    out = {}
    for sid in sessions:
        out[sid] = set(r.lrange(k.session_replies(sid), 0, -1)) | set(r.lrange(k.session(sid), 0, -1))
    return out


def _delete_stream_entries(r: redis.Redis, k: Keys, owned, feedback_ids: list | None = None) -> dict[str, int]:
    """XDEL every entry of the events, rewards, pairs and dead-letter streams that owned(fields)
    says is the forgotten data's (events also XACKed: the workers' group holds none of them).
    The client feedback ids of the deleted events are appended to `feedback_ids`."""
    counts = {}
    for stream in (k.events, k.rewards, k.pairs, k.dead_letters):
        ids = _stream_ids(r, stream, owned, feedback_ids if stream == k.events else None)
        if stream == k.events and ids:
            try:
                r.xack(stream, GROUP, *ids)
            except redis.ResponseError:  # no consumer group yet (no worker ever ran): nothing pending
                pass
            r.hdel(k.worker_errors, *ids)
        for i in range(0, len(ids), 500):
            r.xdel(stream, *ids[i:i + 500])
        counts[stream.removeprefix(k.prefix)] = len(ids)
    return counts


def _session_keys(k: Keys, by_session: dict[str, set[str]], replies: set[str]) -> list[str]:
    """The keys of these sessions and replies, and the idempotency records of the events the
    server derived from them (continuation, abandon, edited, sibling within a session)."""
    doomed = []
    for sid, rids in by_session.items():
        doomed += [k.session(sid), k.session_meta(sid), k.session_replies(sid)]
        doomed += [k.feedback_id(f"derived:sibling:{a}>{b}") for a in rids for b in rids if a != b]
    for rid in replies:
        doomed += [k.reply(rid), k.reward(rid), k.reward_signals(rid),
                   k.feedback_id(f"derived:continuation:{rid}"), k.feedback_id(f"derived:abandon:{rid}"),
                   k.feedback_id(f"derived:edited:{rid}")]
    return doomed


def _delete_keys(p, doomed: list[str]) -> int:
    """Queue DELs of `doomed` in batches on the pipeline; returns how many commands were queued."""
    for i in range(0, len(doomed), 500):
        p.delete(*doomed[i:i + 500])
    return (len(doomed) + 499) // 500


def opt_out(r: redis.Redis, keys: Keys, user_id: str) -> None:
    """From now on the user's data is served but never learned from or exported."""
    r.hset(keys.user(user_id), mapping={"opt_out": "1", "opt_out_at": repr(time.time())})


async def opt_out_async(r, keys: Keys, user_id: str) -> None:
    """The same, with the server's asyncio client."""
    await r.hset(keys.user(user_id), mapping={"opt_out": "1", "opt_out_at": repr(time.time())})
