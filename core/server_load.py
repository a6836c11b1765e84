"""The heartbeat one chat server writes every second into the `servers` hash (core/keys.py), as
one record: what the server is doing now (the busy signal a learner sharing the machine yields
to) and its cumulative chat counters per learner state (what the ops monitor folds into the
series: chat tokens/s and time to first token while the learner is idle vs training). Pure.

Writer: service/serving/load.py (one field per server). Readers: the ops monitor
(worker/ops/store.py), the learner (`chat_busy`), bench/loop.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

STATES = ("idle", "training")   # no learner run holds the learner lock | one does
TTFT_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)   # time-to-first-token histogram bounds
STALE_S = 5.0   # a heartbeat older than this is from a server that stopped or hangs


@dataclass(frozen=True)
class ServerLoad:
    at: float = field(metadata={"help": "time of the heartbeat (seconds since the epoch)"})
    active: int = field(default=0, metadata={"help": "replies generating now"})
    waiting: int = field(default=0, metadata={"help": "requests waiting for their first token"})
    training: bool = field(default=False, metadata={"help": "the server saw the learner lock held"})
    counters: dict = field(default_factory=dict, metadata={"help": (
        "cumulative {counter}_{state}: tokens, busy_s (wall seconds with a stream generating or waiting), "
        "ttft_n, ttft_sum, ttft_le_{bound}")})

    def to_redis(self) -> str:
        return json.dumps({"at": self.at, "active": self.active, "waiting": self.waiting,
                           "training": self.training, "counters": self.counters})

    @classmethod
    def from_redis(cls, raw: str) -> ServerLoad | None:
        """None for a field that is not a heartbeat (hand-written, half-written)."""
        try:
            d = json.loads(raw)
            return cls(float(d["at"]), int(d.get("active", 0)), int(d.get("waiting", 0)), bool(d.get("training")),
                       {k: float(v) for k, v in (d.get("counters") or {}).items()})
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def busy(self, now: float, stale_s: float = STALE_S) -> bool:
        """A fresh heartbeat with a stream generating or waiting."""
        return now - self.at <= stale_s and (self.active > 0 or self.waiting > 0)


def parse_all(fields: Mapping[str, str]) -> dict[str, ServerLoad]:
    """HGETALL `servers` -> server id -> heartbeat (unparsable fields left out)."""
    out = {}
    for sid, raw in fields.items():
        load = ServerLoad.from_redis(raw)
        if load is not None:
            out[sid] = load
    return out


def chat_busy(fields: Mapping[str, str], now: float, stale_s: float = STALE_S) -> bool:
    """Whether any chat server sharing this Redis reports streams generating or waiting now:
    the signal a learner on the same machine yields to between optimizer steps."""
    return any(load.busy(now, stale_s) for load in parse_all(fields).values())
