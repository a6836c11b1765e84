"""A test's view of Redis: the deployment's keys through core.keys.Keys (never spelled out by
hand) and the reads tests make of them, decoded."""
from __future__ import annotations

import json
from dataclasses import dataclass

from core.keys import Keys


@dataclass
class RedisView:
    r: object      # a redis.Redis with decode_responses=True
    keys: Keys

    @classmethod
    def of(cls, r, prefix: str) -> RedisView:
        return cls(r, Keys(prefix))

    def reply(self, reply_id: str) -> dict:
        """The reply hash (empty when there is none)."""
        return self.r.hgetall(self.keys.reply(reply_id))

    def reward(self, reply_id: str) -> dict:
        """The reply's ledger entry (empty when there is none)."""
        return self.r.hgetall(self.keys.reward(reply_id))

    def entries(self, stream: str, **match) -> list[dict]:
        """The fields of each entry of a stream Keys names (`events`, `rewards`, `pairs`,
        `dead_letters`, ...), oldest first, keeping those whose fields equal `match`."""
        return [f for _, f in self.r.xrange(getattr(self.keys, stream)) if all(f.get(k) == v for k, v in match.items())]

    def events(self, **match) -> list[dict]:
        return self.entries("events", **match)

    def history(self, session_id: str) -> list[str]:
        """The reply ids of a session's history, in turn order."""
        return self.r.lrange(self.keys.session(session_id), 0, -1)


def events(server, rdb, **match) -> list[dict]:
    """A server's `events` stream entries whose fields equal `match`."""
    return RedisView(rdb, server.keys).events(**match)


def stored_reply(rdb, server, reply_id: str, decode: bool = False) -> dict:
    """The reply hash a server logged (AssertionError when it logged none); `decode`: its JSON
    list fields (token ids, log-probs, candidates, client, stop) as Python values."""
    h = RedisView(rdb, server.keys).reply(reply_id)
    assert h, f"reply {reply_id} was not logged"
    if decode:
        for k in ("token_ids", "logprobs", "candidates", "client", "stop"):
            h[k] = json.loads(h[k]) if h.get(k) not in (None, "") else None
    return h
