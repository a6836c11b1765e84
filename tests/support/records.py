"""Records written to Redis as the services write them (store.py, the workers, the registry),
for tests that start from data rather than from a chat: replies and their events, feedback
events, final rewards, a registry with two versions. The records are core/records.py's typed
ones (their to_redis() is what the services store); key names come from core.keys.Keys."""
from __future__ import annotations

import json
import time

from core.keys import Keys
from core.records import EventRecord, FinalReward, ReplyRecord


def add_replies(rdb, prefix: str, n: int, *, user: str = "u1", session: str = "s1", ended_at: float | None = None,
                text: str = "Paris is the capital of France.") -> list[str]:
    """Write n reply hashes and their `reply` events the way the server does (service/store.py)."""
    keys, ended_at = Keys(prefix), ended_at or time.time()
    ids = [f"rep_{session}_{i}" for i in range(n)]
    with rdb.pipeline(transaction=False) as p:
        for rid in ids:
            p.hset(keys.reply(rid), mapping=ReplyRecord(
                reply_id=rid, user_id=user, session_id=session, adapter_version="base", text=text,
                n_tokens=7, finish_reason="stop", ended_at=ended_at, opt_out=0).to_redis())
            p.rpush(keys.session_replies(session), rid)
        p.execute()
    return ids


def reply_event(rid: str, user: str = "u1", session: str = "s1") -> dict:
    return EventRecord(kind="reply", reply_id=rid, session_id=session, user_id=user, adapter_version="base",
                       server_time=time.time()).to_redis()


def feedback_event(rid: str, kind: str, value, event_id: str, *, user: str = "u1", session: str = "s1",
                   since_ms: int = 5000) -> dict:
    return EventRecord(event_id=event_id, kind=kind, value=str(value), feedback_id="f" + event_id, reply_id=rid,
                       session_id=session, user_id=user, adapter_version="base", server_time=time.time(),
                       since_reply_end_ms=since_ms).to_redis()


def seed_registry(rdb, keys: Keys, stable: str, canary: str = "") -> None:
    """A registry with versions 1 (parent base) and 2 (parent 1), published, routed as given."""
    now = time.time()
    versions = {"1": {"version": 1, "state": "published", "parent": "base", "created": now - 100},
                "2": {"version": 2, "state": "published", "parent": "1", "created": now - 50}}
    rdb.hset(keys.adapters, mapping={"stable": stable, "canary": canary, "canary_share": "0.5",
                                     "rollback_target": "base", "next_version": "2", "versions": json.dumps(versions)})


def add_rewards(rdb, keys: Keys, version: str, values: list[float], at: float) -> None:
    """One reply and one final reward per value, on `version`, finalised at `at`."""
    for i, v in enumerate(values):
        rid = f"r{version}_{i}_{time.monotonic_ns()}"
        rdb.hset(keys.reply(rid), mapping=ReplyRecord(ended_at=at - 30, text="a b c").to_redis())
        rdb.xadd(keys.rewards, FinalReward(reply_id=rid, adapter_version=version, state="rewarded", reward=v,
                                           finalized_at=at).to_redis())
