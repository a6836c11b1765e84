"""The reward ledger: every Redis read and write of the reward workers (the one worker module
that talks to Redis). Atomic steps are Lua scripts (worker/ledger_lua.py); the flow that uses
them is in worker/processor.py, the reward itself in worker/rewards.py.

Keys written here (prefix omitted): reward:{reply} (ledger entry), reward_signals:{reply},
rewards:pending, rewards, pairs, dead_letters, user:{user}, user_votes:{user}, user_positives:{user},
users:flagged, worker:stats,
worker:errors, lock:{name}, the `rewarders` group of `events`, and derived `abandon` events.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from core.keys import Keys
from core.redis_conn import RECORD_ONCE, RELEASE_LOCK, flat_fields, record_once_call, record_once_results
from worker.rewards import ledger_lua as lua
from worker.rewards.ledger_lua import Applied, Finalized, Opened

GROUP = "rewarders"
VOTES_KEPT = 50
POSITIVES_KEPT = 50   # recent positively-signalled replies per user, for the unsafe-voter weight
# what the reward reads of a reply hash (signals.reply_facts): not its token ids and log-probs
REPLY_FIELDS = ("reply_id", "text", "n_tokens", "finish_reason", "ended_at", "user_id", "adapter_version", "quality")


def _fields(values: list) -> dict:
    return {k: v for k, v in zip(REPLY_FIELDS, values) if v is not None}


@dataclass(frozen=True)
class SignalOp:
    """One step of apply_batch: open reply_id's entry and, with an event_id, record a signal."""
    reply_id: str
    user_id: str = ""
    event_id: str = ""
    signal: dict | None = None
    pair: dict | None = None
    vote: list | None = None


@dataclass(frozen=True)
class PendingEntry:
    stream_id: str
    consumer: str
    idle_ms: int
    deliveries: int


class RewardLedger:
    def __init__(self, client: redis.Redis, keys: Keys):
        self.r = client
        self.k = keys
        self._ensure = client.register_script(lua.ENSURE_ENTRY)
        self._apply = client.register_script(lua.APPLY_SIGNAL)
        self._finalize = client.register_script(lua.FINALIZE)
        self._dead = client.register_script(lua.DEAD_LETTER)
        self._acquire = client.register_script(lua.ACQUIRE_OR_RENEW)
        self._release = client.register_script(RELEASE_LOCK)
        self._forget = client.register_script(lua.FORGET_CONSUMER)
        self._record_once = client.register_script(RECORD_ONCE)
        self._apply_batch = client.register_script(lua.APPLY_BATCH)
        self._claim_due = client.register_script(lua.CLAIM_DUE)
        self._finalize_many = client.register_script(lua.FINALIZE_MANY)

    # --- the events stream and its consumer group -----------------------------------------
    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.k.events, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # the group exists already: fine, anything else is not
                raise

    def read_new(self, consumer: str, count: int, block_ms: int | None = None) -> list[tuple[str, dict]]:
        """Up to `count` new events; with block_ms, wait that long for the first one."""
        reply = self.r.xreadgroup(GROUP, consumer, {self.k.events: ">"}, count=count, block=block_ms)
        return reply[0][1] if reply else []

    def read_own_pending(self, consumer: str, count: int, after: str = "0") -> list[tuple[str, dict | None]]:
        """Entries delivered to this consumer and not acked yet, after stream id `after` (fields
        None: trimmed from the stream meanwhile)."""
        reply = self.r.xreadgroup(GROUP, consumer, {self.k.events: after}, count=count)
        return reply[0][1] if reply else []

    def ack(self, stream_ids: list[str]) -> None:
        if stream_ids:
            with self.r.pipeline(transaction=True) as p:
                p.xack(self.k.events, GROUP, *stream_ids)
                p.hdel(self.k.worker_errors, *stream_ids)
                p.hincrby(self.k.worker_stats, "events", len(stream_ids))
                p.execute()

    def note_error(self, stream_id: str, error: str) -> None:
        self.r.hset(self.k.worker_errors, stream_id, error[:2000])

    def stale_pending(self, min_idle_ms: int, count: int) -> list[PendingEntry]:
        rows = self.r.xpending_range(self.k.events, GROUP, "-", "+", count, idle=min_idle_ms)
        return [PendingEntry(r["message_id"], r["consumer"], int(r["time_since_delivered"]),
                             int(r["times_delivered"])) for r in rows]

    def autoclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[tuple[str, dict]]:
        """Take over entries idle longer than min_idle_ms (their worker died or failed on them)."""
        reply = self.r.xautoclaim(self.k.events, GROUP, consumer, min_idle_ms, "0-0", count=count)
        return [(sid, f) for sid, f in reply[1] if f is not None]  # None: trimmed away meanwhile

    def consumers(self) -> list[dict]:
        """[{name, pending, idle (ms)}] of the group's consumers."""
        try:
            rows = self.r.xinfo_consumers(self.k.events, GROUP)
        except redis.ResponseError:  # no stream or group yet
            return []
        return [{"name": c["name"], "pending": int(c["pending"]), "idle": int(c["idle"])} for c in rows]

    def prune_consumers(self, idle_ms: int) -> int:
        """Forget consumers (worker processes) idle that long with nothing pending: restarts
        would otherwise grow the group's consumer list forever."""
        gone = 0
        for c in self.r.xinfo_consumers(self.k.events, GROUP):
            if int(c["pending"]) == 0 and int(c["idle"]) > idle_ms:
                gone += int(self._forget(keys=[self.k.events], args=[GROUP, c["name"]]))
        return gone

    def dead_letter(self, entry: PendingEntry, reason: str) -> bool:
        """Park an event that failed `entry.deliveries` times, with its last error; ack it."""
        rows = self.r.xrange(self.k.events, entry.stream_id, entry.stream_id)
        fields = rows[0][1] if rows else {}
        error = self.r.hget(self.k.worker_errors, entry.stream_id) or reason
        letter = {"stream_id": entry.stream_id, "kind": fields.get("kind", ""), "reply_id": fields.get("reply_id", ""),
                  "deliveries": entry.deliveries, "error": error, "event": fields, "dead_at": repr(time.time())}
        done = self._dead(keys=[self.k.events, self.k.dead_letters, self.k.worker_errors, self.k.worker_stats],
                          args=[GROUP, entry.stream_id, json.dumps(flat_fields(letter))])
        return bool(done)

    def dead_letters(self, limit: int) -> list[tuple[str, dict]]:
        return self.r.xrevrange(self.k.dead_letters, count=limit)

    # --- ledger entries and signals ---------------------------------------------------------
    def ensure_entry(self, reply_id: str, wait_window_s: float, now: float) -> Opened:
        """CREATED now, EXISTED (open or final), or NO_SUCH_REPLY."""
        return Opened(self._ensure(keys=[self.k.reward(reply_id), self.k.rewards_pending, self.k.reply(reply_id)],
                                args=[reply_id, repr(wait_window_s), repr(now)]))

    def apply_signal(self, reply_id: str, user_id: str, signal: dict, pair: dict | None, vote: list | None
                     ) -> Applied:
        """DUPLICATE (already counted), RECORDED, or LATE (recorded; the reply was final)."""
        keys = [self.k.reward_signals(reply_id), self.k.reward(reply_id), self.k.pairs, self.k.user_votes(user_id),
                self.k.worker_stats]
        args = [signal["event_id"], json.dumps(signal), json.dumps(flat_fields(pair)) if pair else "",
                json.dumps(vote) if vote else ""]
        return Applied(self._apply(keys=keys, args=args))

    def apply_batch(self, events: list[tuple[list[SignalOp], str | None]], wait_window_s: float,
                    now: float) -> tuple[list[list], dict[str, list[tuple]]]:
        """Open entries, record signals and end sessions for a batch of events in one atomic call
        (lua.APPLY_BATCH). events: (signal ops, session id to end or None) per event.
        -> (per event [1, result per signal...] or [-1, missing reply id],
            {user_id: recent votes oldest first} for every user with a vote in the batch)."""
        keys = [self.k.rewards_pending, self.k.pairs, self.k.worker_stats]
        index: dict[str, int] = {}

        def at(key: str) -> int:
            if key not in index:
                keys.append(key)
                index[key] = len(keys)  # Lua indexes from 1
            return index[key]

        plan, voters = [], {}
        for ops, session_id in events:
            lua_ops = []
            for op in ops:
                votes = 0
                if op.vote:
                    votes = voters.setdefault(op.user_id, at(self.k.user_votes(op.user_id)))
                lua_ops.append([op.reply_id, at(self.k.reward(op.reply_id)), at(self.k.reply(op.reply_id)),
                                at(self.k.reward_signals(op.reply_id)), votes, op.event_id,
                                json.dumps(op.signal) if op.signal else "",
                                json.dumps(flat_fields(op.pair)) if op.pair else "",
                                json.dumps(op.vote) if op.vote else ""])
            plan.append([lua_ops, at(self.k.session_replies(session_id)) if session_id else 0])
        results, votes = self._apply_batch(keys=keys, args=[repr(wait_window_s), repr(now), json.dumps(plan),
                                                            json.dumps(list(voters.values()))])
        recent = {user: [tuple(json.loads(v)) for v in reversed(lst)] for user, lst in zip(voters, votes)}
        return [[Opened.NO_SUCH_REPLY, str(res[1])] if int(res[0]) == Opened.NO_SUCH_REPLY
                else [Opened.CREATED, *(Applied(x) for x in res[1:])] for res in results], recent

    def commit_batch(self, done: list[str], errors: dict[str, str], weights: list[tuple[str, float, str | None]],
                     now: float) -> None:
        """After apply_batch: user weights, errors of the failed entries, and the acks, together."""
        with self.r.pipeline(transaction=True) as p:
            for user_id, weight, reason in weights:
                p.hset(self.k.user(user_id), mapping={"anomaly_weight": repr(weight), "anomaly_reason": reason or "",
                                                      "anomaly_checked_at": repr(now)})
                self._flag(p, user_id, weight, now)
            if errors:
                p.hset(self.k.worker_errors, mapping={sid: err[:2000] for sid, err in errors.items()})
            if done:
                p.xack(self.k.events, GROUP, *done)
                p.hdel(self.k.worker_errors, *done)
                p.hincrby(self.k.worker_stats, "events", len(done))
            p.execute()

    def end_session(self, session_id: str, now: float) -> int:
        """Session end: every pending reply of the session is due now (ZADD XX LT: only pending
        ones, and never later than already due)."""
        rids = self.r.lrange(self.k.session_replies(session_id), 0, -1)
        if not rids:
            return 0
        return int(self.r.zadd(self.k.rewards_pending, {rid: now for rid in rids}, xx=True, lt=True, ch=True))

    def recent_votes(self, user_id: str) -> list[tuple]:
        """The user's recent votes, oldest first."""
        return [tuple(json.loads(v)) for v in reversed(self.r.lrange(self.k.user_votes(user_id), 0, VOTES_KEPT - 1))]

    def set_user_weight(self, user_id: str, weight: float, reason: str | None, now: float) -> None:
        with self.r.pipeline(transaction=True) as p:
            p.hset(self.k.user(user_id), mapping={"anomaly_weight": repr(weight), "anomaly_reason": reason or "",
                                                  "anomaly_checked_at": repr(now)})
            self._flag(p, user_id, weight, now)
            p.execute()

    def _flag(self, p, user_id: str, weight: float, now: float) -> None:
        """A weight below 1 lists the user in users:flagged (once, with the first time); readers skip
        users whose weights are back to 1 (flagged_users), so a normal vote costs no write."""
        if weight < 1.0:
            p.zadd(self.k.flagged_users, {user_id: now}, nx=True)

    def note_positives(self, flags: list[tuple[str, int]]) -> dict[str, list[int]]:
        """Record, per finalized reply a user signalled positively, whether it was unsafe (1/0);
        -> {user: their recent flags, newest first}."""
        by_user: dict[str, list[int]] = {}
        for user_id, unsafe in flags:
            by_user.setdefault(user_id, []).append(int(unsafe))
        with self.r.pipeline(transaction=False) as p:
            # one LPUSH per user (its values land newest first, as one push each would), not one per reply:
            # a batch is mostly a few users' replies, and this ran for every positively-signalled one
            for user_id, values in by_user.items():
                key = self.k.user_positives(user_id)
                p.lpush(key, *values[-POSITIVES_KEPT:])
                p.ltrim(key, 0, POSITIVES_KEPT - 1)
                p.lrange(key, 0, POSITIVES_KEPT - 1)
            out = p.execute()[2::3]
        return {u: [int(x) for x in lst] for u, lst in zip(by_user, out)}

    def set_unsafe_voter(self, weights: list[tuple[str, float, str | None]], now: float) -> None:
        with self.r.pipeline(transaction=True) as p:
            for user_id, weight, reason in weights:
                p.hset(self.k.user(user_id), mapping={"unsafe_voter_weight": repr(weight),
                                                      "unsafe_voter_reason": reason or ""})
                self._flag(p, user_id, weight, now)
            p.execute()

    def due(self, now: float, limit: int) -> list[str]:
        return self.r.zrangebyscore(self.k.rewards_pending, "-inf", now, start=0, num=limit)

    def claim_due(self, now: float, limit: int, lease_s: float) -> list[str]:
        """Due replies, leased to this caller for lease_s (other workers skip them meanwhile)."""
        return self._claim_due(keys=[self.k.rewards_pending], args=[repr(now), limit, repr(now + lease_s)])

    def drop_due(self, reply_ids: list[str]) -> None:
        """Forget pending marks whose entry is gone or already final."""
        if reply_ids:
            self.r.zrem(self.k.rewards_pending, *reply_ids)

    def finalize_inputs_many(self, reply_ids: list[str]) -> list[tuple[dict, dict, list[dict], dict]]:
        """finalize_inputs of many replies in two round trips."""
        with self.r.pipeline(transaction=False) as p:
            for rid in reply_ids:
                p.hgetall(self.k.reward(rid))
                p.hmget(self.k.reply(rid), REPLY_FIELDS)
                p.hvals(self.k.reward_signals(rid))
            flat = p.execute()
        rows = [flat[i:i + 3] for i in range(0, len(flat), 3)]
        users = sorted({e["user_id"] for e, _, _ in rows if e.get("user_id")})
        by_user = self._users(users)
        return [(e, _fields(reply), [json.loads(s) for s in sig], by_user.get(e.get("user_id"), {}))
                for e, reply, sig in rows]

    def _users(self, users: list[str]) -> dict[str, dict]:
        """user hash of each, plus `_positives` (their recent unsafe flags, newest first)."""
        with self.r.pipeline(transaction=False) as p:
            for u in users:
                p.hgetall(self.k.user(u))
                p.lrange(self.k.user_positives(u), 0, POSITIVES_KEPT - 1)
            flat = p.execute()
        return {u: {**flat[2 * i], "_positives": [int(x) for x in flat[2 * i + 1]]} for i, u in enumerate(users)}

    def finalize_many(self, items: list[tuple[str, int, dict, dict, dict | None]]) -> list[int]:
        """finalize() of many replies in one call (lua.FINALIZE_MANY; each one decided on its own)."""
        if not items:
            return []
        keys = [self.k.rewards_pending, self.k.rewards, self.k.pairs, self.k.worker_stats]
        for reply_id, *_ in items:
            keys += [self.k.reward(reply_id), self.k.reward_signals(reply_id)]
        plan = [[rid, n, flat_fields(lf), flat_fields(sf), flat_fields(pair) if pair else 0]
                for rid, n, lf, sf, pair in items]
        return [Finalized(x) for x in self._finalize_many(keys=keys, args=[json.dumps(plan)])]

    def finalize_inputs(self, reply_id: str) -> tuple[dict, dict, list[dict], dict]:
        """(ledger entry, reply fields, signals, user hash) of one reply, read together."""
        with self.r.pipeline(transaction=True) as p:
            p.hgetall(self.k.reward(reply_id))
            p.hmget(self.k.reply(reply_id), REPLY_FIELDS)
            p.hvals(self.k.reward_signals(reply_id))
            entry, reply, signals = p.execute()
        user = self._users([entry["user_id"]])[entry["user_id"]] if entry.get("user_id") else {}
        return entry, _fields(reply), [json.loads(s) for s in signals], user

    def finalize(self, reply_id: str, n_signals: int, ledger_fields: dict, stream_fields: dict,
                 pair: dict | None) -> int:
        """1 finalized now, 0 already final, -1 a signal arrived meanwhile (recompute and retry)."""
        keys = [self.k.reward(reply_id), self.k.rewards_pending, self.k.reward_signals(reply_id), self.k.rewards,
                self.k.pairs, self.k.worker_stats]
        args = [reply_id, n_signals, json.dumps(flat_fields(ledger_fields)), json.dumps(flat_fields(stream_fields)),
                json.dumps(flat_fields(pair)) if pair else ""]
        return Finalized(self._finalize(keys=keys, args=args))

    def entry(self, reply_id: str) -> dict:
        return self.r.hgetall(self.k.reward(reply_id))

    def signals(self, reply_id: str) -> list[dict]:
        return sorted((json.loads(s) for s in self.r.hvals(self.k.reward_signals(reply_id))), key=lambda s: s["ts"])

    def reply(self, reply_id: str) -> dict:
        return self.r.hgetall(self.k.reply(reply_id))

    # --- abandoned sessions ------------------------------------------------------------------
    def recent_sessions(self, since: float) -> list[str]:
        return self.r.zrangebyscore(self.k.sessions, since, "+inf")

    def session_tail(self, session_id: str) -> tuple[float | None, str | None, str | None]:
        """(last_active, user_id, last reply id in the history) of one session."""
        with self.r.pipeline(transaction=False) as p:
            p.hmget(self.k.session_meta(session_id), "last_active", "user_id")
            p.lindex(self.k.session(session_id), -1)
            (last_active, user_id), last_reply = p.execute()
        return (float(last_active) if last_active else None), user_id, last_reply

    def abandon_recorded(self, reply_id: str) -> bool:
        return bool(self.r.exists(self.k.feedback_id(f"derived:abandon:{reply_id}")))

    def record_abandon(self, reply_id: str, fields: dict) -> bool:
        """Append one `abandon` event for the reply, at most once ever (like the server's feedback)."""
        keys, args = record_once_call(self.k.events, [(self.k.feedback_id(f"derived:abandon:{reply_id}"),
                                                       flat_fields(fields))])
        return record_once_results(self._record_once(keys=keys, args=args))[0][0]

    # --- counters and the beat lock ----------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        self.r.hincrby(self.k.worker_stats, name, n)

    def stats(self) -> dict:
        return self.r.hgetall(self.k.worker_stats)

    def acquire_or_renew(self, name: str, token: str, ttl_s: float) -> bool:
        return bool(self._acquire(keys=[self.k.lock(name)], args=[token, int(ttl_s * 1000)]))

    def release(self, name: str, token: str) -> bool:
        return bool(self._release(keys=[self.k.lock(name)], args=[token]))
