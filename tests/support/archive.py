"""Logged sessions for the archive tests, written the way the server and the reward workers
write them (through the typed records of core/records.py and the keys of core/keys.py)."""
from __future__ import annotations

import itertools
import json
import secrets
import time
from dataclasses import dataclass

from core.keys import Keys
from core.records import EventRecord, FinalReward, ReplyRecord, RewardEntry, SessionRecord

_seq = itertools.count(1)


@dataclass(frozen=True)
class Logged:
    session: SessionRecord
    replies: list[ReplyRecord]
    ledger: list[RewardEntry]
    events: list[EventRecord]
    rewards: list[FinalReward]


def xadd_at(r, stream: str, fields: dict, at: float) -> str:
    """Stream entry at time `at` (ids stay increasing within one test's streams)."""
    top = r.xrevrange(stream, count=1)
    ms = int(at * 1000)
    if top:
        last_ms, last_seq = (int(x) for x in top[0][0].split("-"))
        if ms <= last_ms:
            return r.xadd(stream, fields, id=f"{last_ms}-{last_seq + 1}")
    return r.xadd(stream, fields, id=f"{ms}-{next(_seq)}")


def log_session(r, keys: Keys, *, user: str = "u1", turns: int = 2, at: float | None = None, state: str = "rewarded",
                thumbs: int | None = 1, text: str = "Paris is the capital of France.", tokens: int = 8,
                version: str = "base") -> Logged:
    """A session of `turns` replies that ended at `at` (default now), each with a thumbs event and a
    ledger entry in `state` (None: no entry yet) and, when final, a `rewards` stream entry."""
    at = at or time.time()
    sid = f"s_{secrets.token_hex(6)}"
    replies, ledger, events, rewards = [], [], [], []
    for i in range(turns):
        rid = f"rep_{secrets.token_hex(6)}"
        rep = ReplyRecord(reply_id=rid, user_id=user, session_id=sid, turn=i, api="ws", user_text=f"question {i}",
                          prompt_messages=[{"role": "user", "content": f"question {i}"}], prompt_ids=[1, 2, 3 + i],
                          history_dropped=0, text=f"{text} ({i})", token_ids=list(range(10, 10 + tokens)),
                          logprobs=[round(-0.1 * (k + 1) - i / 7, 6) for k in range(tokens)],
                          params={"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 12, "seed": 100 + i},
                          adapter_version=version, model_id="test", queued_at=at - 2, first_token_at=at - 1,
                          ended_at=at, finish_reason="stop", n_tokens=tokens, prefix_reused=0, peak_rows=1,
                          opt_out=0, logged_at=at)
        r.hset(keys.reply(rid), mapping=rep.to_redis())
        r.rpush(keys.session_replies(sid), rid)
        r.rpush(keys.session(sid), rid)
        sid_reply = xadd_at(r, keys.events, {"kind": "reply", "reply_id": rid, "session_id": sid, "user_id": user,
                                           "adapter_version": version, "server_time": repr(at)}, at)
        events.append(EventRecord.from_redis(r.xrange(keys.events, sid_reply, sid_reply)[0][1], stream_id=sid_reply))
        signals = {}
        if thumbs is not None:
            ev = {"event_id": f"ev_{secrets.token_hex(8)}", "kind": "thumbs", "value": json.dumps(thumbs),
                  "feedback_id": f"fb{secrets.token_hex(4)}", "reply_id": rid, "session_id": sid, "user_id": user,
                  "adapter_version": version, "server_time": repr(at + 1), "since_reply_end_ms": "1000"}
            eid = xadd_at(r, keys.events, ev, at + 1)
            events.append(EventRecord.from_redis(ev, stream_id=eid))
            signals[ev["event_id"]] = json.dumps({"kind": "thumbs", "ts": at + 1, "user_id": user,
                                                  "event_id": ev["event_id"], "value": thumbs})
        if state is not None:
            entry, final = _write_ledger(r, keys, rep, state=state, thumbs=thumbs, signals=signals)
            ledger.append(entry)
            rewards += [final] if final is not None else []
        replies.append(rep)
    meta = {"user_id": user, "created": repr(at - 5), "last_active": repr(at)}
    r.hset(keys.session_meta(sid), mapping=meta)
    r.zadd(keys.sessions, {sid: at - 5})
    r.zadd(keys.user_sessions(user), {sid: at - 5})
    session = SessionRecord.from_redis(meta, session_id=sid, history=[x.reply_id for x in replies],
                                       replies=[x.reply_id for x in replies])
    return Logged(session, replies, ledger, events, rewards)


def _write_ledger(r, keys: Keys, rep: ReplyRecord, *, state: str, thumbs: int | None,
                  signals: dict) -> tuple[RewardEntry, FinalReward | None]:
    """The reply's ledger entry in `state` and, when that is final, its `rewards` stream entry (else
    it waits in rewards_pending), as the reward workers write them."""
    rid, user, sid, version, at = rep.reply_id, rep.user_id, rep.session_id, rep.adapter_version, rep.ended_at
    final = state != "pending"
    entry = RewardEntry(reply_id=rid, state=state, user_id=user, session_id=sid, adapter_version=version,
                        ended_at=at, due_at=at + 600, opened_at=at, opt_out=0, late_signals=0,
                        reward=float(thumbs or 0) if final else None, components={"thumbs": float(thumbs or 0)}
                        if final else None, config_hash="test" if final else None,
                        finalized_at=at + 600 if final else None, signals=signals)
    r.hset(keys.reward(rid), mapping=entry.to_redis())
    if signals:
        r.hset(keys.reward_signals(rid), mapping=signals)
    if not final:
        r.zadd(keys.rewards_pending, {rid: at + 600})
        return entry, None
    fields = {"reply_id": rid, "user_id": user, "session_id": sid, "adapter_version": version,
              "state": state, "reward": repr(float(thumbs or 0)), "config_hash": "test",
              "user_weight": "1.0", "opt_out": "0", "finalized_at": repr(at + 600),
              "components": "thumbs" if thumbs is not None else ""}
    rid_stream = xadd_at(r, keys.rewards, fields, at + 600)
    return entry, FinalReward.from_redis(fields, stream_id=rid_stream)


def consume_events(r, keys: Keys, group: str = "rewarders") -> None:
    """What the reward workers do to the events stream: read every entry and ack it."""
    try:
        r.xgroup_create(keys.events, group, id="0", mkstream=True)
    except Exception as exc:  # the group exists already
        if "BUSYGROUP" not in str(exc):
            raise
    while True:
        got = r.xreadgroup(group, "test-consumer", {keys.events: ">"}, count=1000)
        if not got or not got[0][1]:
            return
        r.xack(keys.events, group, *[i for i, _ in got[0][1]])


def files_containing(root, needle: str) -> list[str]:
    """Files under the archive folder that hold `needle`: Parquet files decoded (their pages are
    compressed), any other file as raw bytes."""
    from pathlib import Path

    import pyarrow.parquet as pq
    found = []
    for p in Path(root).rglob("*"):
        if not p.is_file():
            continue
        if p.name.endswith(".parquet"):
            body = json.dumps(pq.read_table(p).to_pylist(), default=str)
        else:
            body = p.read_bytes().decode("utf-8", "replace")
        if needle in body:
            found.append(str(p))
    return found
