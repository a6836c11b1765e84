"""Redis connections and the Lua steps several parts share: one owner for each.

`connect` / `connect_async` are the only places a client is built, so every process talks
RESP2 with str replies (stream and hash replies keep the shapes the parts expect) and the
same timeouts. The Lua scripts here are used by more than one writer; each part's own
scripts stay with that part.
"""
from __future__ import annotations

import json

import redis
import redis.asyncio as aredis


def connect(url: str, *, decode: bool = True, timeout_s: float | None = None,
            health_check_interval: int = 30, name: str | None = None) -> redis.Redis:
    """A blocking client. timeout_s bounds connecting and each command (None: no bound);
    name shows in CLIENT LIST (which process holds which connections)."""
    return redis.Redis.from_url(url, decode_responses=decode, protocol=2, socket_timeout=timeout_s,
                                socket_connect_timeout=timeout_s, health_check_interval=health_check_interval,
                                client_name=name)


def connect_async(url: str, *, decode: bool = False, health_check_interval: int = 10,
                  max_connections: int = 100, wait_s: float = 10.0) -> aredis.Redis:
    """An asyncio client (the server's: bytes replies, decoded where read).

    The pool blocks: past max_connections a command waits up to wait_s for a free one. redis-py's
    default pool raises "Too many connections" at once instead, so a burst of 300 websocket hellos
    (each a command or two) failed two thirds of them although every command takes a millisecond."""
    pool = aredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=wait_s,
                                                  decode_responses=decode,
                                                  health_check_interval=health_check_interval)
    return aredis.Redis.from_pool(pool)


# Release a lock only if it still holds our token (a lapsed lock may belong to someone else).
# KEYS: lock   ARGV: token
RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Idempotent event append, for a batch of events in one call: each event's id record and
# stream entry are written in one atomic step, so a retry can never store a second copy,
# and with appendfsync always the reply to this script means the events are on disk.
# Used by the server (feedback intake) and the reward workers (derived events).
# KEYS = [stream, id key 1, id key 2, ...]; ARGV = [JSON [ttl1, ttl2, ...], JSON [[field, value, ...], ...]]
# (one JSON argument instead of hundreds: packing arguments was a fifth of the server's time).
# Returns [created1, stream id1, created2, stream id2, ...].
RECORD_ONCE = """
local out, ttls = {}, cjson.decode(ARGV[1])
local events = cjson.decode(ARGV[2])
for i = 2, #KEYS do
  local prev = redis.call('GET', KEYS[i])
  if prev then
    out[#out + 1] = 0; out[#out + 1] = prev
  else
    local id = redis.call('XADD', KEYS[1], '*', unpack(events[i - 1]))
    redis.call('SET', KEYS[i], id, 'EX', ttls[i - 1])
    out[#out + 1] = 1; out[#out + 1] = id
  end
end
return out
"""

# Derived events (a continuation, an abandonment) are recorded at most once while their reply is
# in Redis: their id records live this long, and the archive deletes them with the reply. A
# user's feedback ids live REWARDLOOP_HOT_FEEDBACK_ID_S (the server passes it).
IDEMPOTENCY_TTL_S = 7 * 24 * 3600


def record_once_call(stream: str, items: list[tuple[str, list[str]]],
                     ttls: list[int] | None = None) -> tuple[list[str], list]:
    """KEYS and ARGV of RECORD_ONCE for [(idempotency key, flat field/value list), ...]; ttls:
    seconds each id record lives (default IDEMPOTENCY_TTL_S)."""
    ttls = [int(t) for t in ttls] if ttls is not None else [IDEMPOTENCY_TTL_S] * len(items)
    return [stream, *(id_key for id_key, _ in items)], [json.dumps(ttls), json.dumps([flat for _, flat in items])]


def record_once_results(out: list) -> list[tuple[bool, str]]:
    """[(created, stream id)] per item, from RECORD_ONCE's flat reply."""
    return [(bool(out[i]), out[i + 1].decode() if isinstance(out[i + 1], bytes) else str(out[i + 1]))
            for i in range(0, len(out), 2)]


def flat_fields(fields: dict) -> list[str]:
    """[field, value, ...] as Redis stores them: None left out, non-strings as JSON."""
    out: list[str] = []
    for k, v in fields.items():
        if v is None:
            continue
        out += [k, v if isinstance(v, str) else json.dumps(v)]
    return out
