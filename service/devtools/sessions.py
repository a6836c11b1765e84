"""Logged sessions as developers see them: the one developer-tools module that reads Redis.

A session's detail puts together what several writers left: the session meta and reply lists
(server), each reply hash (server), the feedback events of the `events` stream (server), the
ledger entry and signals of each reply (reward workers) and the preference pairs (workers).
`sessions list|show|export`, `replay`, the admin endpoints and `evaluate` all read through
`SessionLog`, so they agree on what a session is. Synchronous redis client with
`decode_responses=True`.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from core import versions
from core.keys import Keys
from core.records import decode_reply

RAW_FIELDS = ("prompt_ids", "token_ids", "logprobs")  # big arrays: only in raw exports and replay
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SCAN_CAP = 10_000  # most sessions one list call looks at (newest first)


def parse_time(text: str | float | None, now: float | None = None) -> float | None:
    """Seconds since the epoch from: epoch seconds, a relative age ('90s', '30m', '2h', '7d', '1w'
    ago), or an ISO date/time ('2026-11-28', '2026-11-28T10:00', UTC unless it says otherwise)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        pass
    m = _RELATIVE.match(text)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"cannot read time {text!r}: use epoch seconds, an age like 30m / 2h / 7d, "
                         "or an ISO date like 2026-11-28 or 2026-11-28T10:00") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


normalize_version = versions.normalize  # re-exported: developer tools accept 'v3' and '3' alike


@dataclass(frozen=True)
class SessionFilter:
    user: str | None = None
    since: float | None = None       # sessions created at or after (epoch seconds)
    adapter: str | None = None       # at least one reply served by this version
    min_reward: float | None = None  # mean final reward of the session's rewarded replies >= this
    limit: int = 50

    def __post_init__(self):
        if self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit!r}")
        object.__setattr__(self, "adapter", normalize_version(self.adapter))


def decode_reward(entry: dict, signals: list[str]) -> dict | None:
    """Ledger entry + signals -> {state, reward, components, ...}; None when no worker saw it."""
    if not entry:
        return None
    out = {k: entry.get(k) for k in ("state", "config_hash", "anomaly_reason") if entry.get(k)}
    for k in ("reward", "total", "raw_sum", "user_weight", "finalized_at", "due_at"):
        v = entry.get(k)
        out[k] = float(v) if v not in (None, "") else None
    for k in ("components", "explain", "notes"):
        try:
            out[k] = json.loads(entry[k]) if entry.get(k) else ({} if k == "components" else [])
        except ValueError:
            out[k] = entry[k]
    out["signals"] = sorted((json.loads(s) for s in signals), key=lambda s: s.get("ts", 0))
    return out


def _event(stream_id: str, f: dict) -> dict:
    value = f.get("value")
    try:
        value = json.loads(value) if value is not None else None
    except ValueError:
        pass
    at = f.get("server_time")
    return {"stream_id": stream_id, "kind": f.get("kind", ""), "value": value, "event_id": f.get("event_id"),
            "feedback_id": f.get("feedback_id"), "server_time": float(at) if at else None,
            "client_time": f.get("client_time"), "since_reply_end_ms": f.get("since_reply_end_ms"),
            "derived": bool(f.get("derived"))}


class SessionLog:
    def __init__(self, r: redis.Redis, keys: Keys):
        self.r = r  # decode_responses=True
        self.k = keys

    # --- users ------------------------------------------------------------------------
    def excluded(self, user_id: str) -> str | None:
        """'forgotten' / 'opted out' when the user's data must not be used for learning or
        export; None otherwise. (Replies logged with opt_out=1 are checked on their own.)"""
        forgotten, opt_out = self.r.hmget(self.k.user(user_id), "forgotten", "opt_out")
        if forgotten not in (None, "", "0"):
            return "forgotten"
        if opt_out not in (None, "", "0"):
            return "opted out"
        return None

    # --- listing ----------------------------------------------------------------------
    def _candidate_ids(self, flt: SessionFilter) -> list[str]:
        key = self.k.user_sessions(flt.user) if flt.user else self.k.sessions
        low = flt.since if flt.since is not None else "-inf"
        return self.r.zrevrangebyscore(key, "+inf", low, start=0, num=SCAN_CAP)

    def list(self, flt: SessionFilter) -> list[dict]:
        """Summaries of matching sessions, newest first."""
        out = []
        for sid in self._candidate_ids(flt):
            s = self.summary(sid)
            if s is None or not self._matches(s, flt):
                continue
            out.append(s)
            if len(out) >= flt.limit:
                break
        return out

    @staticmethod
    def _matches(s: dict, flt: SessionFilter) -> bool:
        if flt.adapter is not None and flt.adapter not in s["adapters"]:
            return False
        if flt.min_reward is not None and (s["mean_reward"] is None or s["mean_reward"] < flt.min_reward):
            return False
        return True

    def summary(self, session_id: str) -> dict | None:
        with self.r.pipeline(transaction=False) as p:
            p.hgetall(self.k.session_meta(session_id))
            p.lrange(self.k.session(session_id), 0, -1)
            p.lrange(self.k.session_replies(session_id), 0, -1)
            meta, history, replies = p.execute()
        if not meta:
            return None
        with self.r.pipeline(transaction=False) as p:
            for rid in replies:
                p.hmget(self.k.reply(rid), "adapter_version", "opt_out")
                p.hmget(self.k.reward(rid), "state", "reward")
            rows = p.execute()
        versions = [v for v, _ in rows[0::2]]
        token_opt_out = any(o not in (None, "", "0") for _, o in rows[0::2])  # a token made with --opt-out
        rewards = [float(rw) for st, rw in rows[1::2] if st in ("rewarded", "defaulted") and rw not in (None, "")]
        user = meta.get("user_id", "")
        return {"session_id": session_id, "user_id": user, "created": float(meta.get("created", 0)),
                "last_active": float(meta.get("last_active", 0)), "turns": len(history), "replies": len(replies),
                "adapters": sorted({v for v in versions if v}, key=lambda v: (v != "base", v.zfill(8))),
                "rewarded": len(rewards), "mean_reward": sum(rewards) / len(rewards) if rewards else None,
                "excluded": self.excluded(user) or ("opted out" if token_opt_out else None)}

    # --- one session ------------------------------------------------------------------
    def events(self, session_id: str, since: float) -> list[tuple[str, dict]]:
        """Events of the session (feedback, derived continuation/abandon), read from the
        stream from the session's creation on (stream ids start with milliseconds)."""
        out, start = [], f"{max(0, int(since * 1000) - 1000)}-0"
        while True:
            batch = self.r.xrange(self.k.events, min=start, max="+", count=1000)
            out += [(i, f) for i, f in batch if f.get("session_id") == session_id and f.get("kind") != "reply"]
            if len(batch) < 1000:
                return out
            start = "(" + batch[-1][0]

    def pairs(self, reply_ids: set[str]) -> list[dict]:
        """Preference pairs (workers' `pairs` stream) between replies of this set."""
        return [dict(f, stream_id=i) for i, f in self.r.xrange(self.k.pairs)
                if f.get("chosen_id") in reply_ids and f.get("rejected_id") in reply_ids]

    def detail(self, session_id: str, raw: bool = False) -> dict | None:
        """Every reply of the session in the order generated, each with its user text, prompt,
        version, sampling params, feedback events with times, and final reward with components.
        raw=True keeps the token ids, prompt ids and behavior log-probs."""
        summary = self.summary(session_id)
        if summary is None:
            return None
        history = set(self.r.lrange(self.k.session(session_id), 0, -1))
        rids = self.r.lrange(self.k.session_replies(session_id), 0, -1)
        with self.r.pipeline(transaction=False) as p:
            for rid in rids:
                p.hgetall(self.k.reply(rid))
                p.hgetall(self.k.reward(rid))
                p.hvals(self.k.reward_signals(rid))
            rows = p.execute()
        by_reply: dict[str, list[dict]] = {rid: [] for rid in rids}
        for stream_id, f in self.events(session_id, summary["created"]):
            ev = _event(stream_id, f)
            if f.get("reply_id") in by_reply:
                by_reply[f["reply_id"]].append(ev)
            if ev["kind"] == "choose" and isinstance(ev["value"], str) and ev["value"] in by_reply:
                by_reply[ev["value"]].append(dict(ev, role="rejected"))
        replies = []
        for i, rid in enumerate(rids):
            rec = decode_reply(rows[3 * i]) if rows[3 * i] else {"reply_id": rid, "missing": True}
            rec["in_history"] = rid in history
            logps = rec.get("logprobs")
            rec["behavior_logp"] = sum(logps) if isinstance(logps, list) else None
            if not raw:
                for k in RAW_FIELDS:
                    rec.pop(k, None)
            rec["events"] = by_reply[rid]
            rec["reward"] = decode_reward(rows[3 * i + 1], rows[3 * i + 2])
            replies.append(rec)
        return dict(summary, replies=replies, pairs=self.pairs(set(rids)))

    def session_of_reply(self, reply_id: str) -> str | None:
        return self.r.hget(self.k.reply(reply_id), "session_id")

    # --- logged rewards (evaluate) ----------------------------------------------------
    def final_rewards(self, since: float | None, limit: int) -> list[dict]:
        """The newest final rewards (rewards stream), at most `limit`, finalized at or after
        `since`; one per reply (the first final reward wins, as in the learner)."""
        start = f"{int(since * 1000)}-0" if since else "-"
        seen: dict[str, dict] = {}
        for stream_id, e in self.r.xrange(self.k.rewards, min=start, max="+"):
            rid = e.get("reply_id", "")
            if rid and rid not in seen and e.get("state") in ("rewarded", "defaulted") and e.get("reward"):
                seen[rid] = dict(e, stream_id=stream_id)
        return list(seen.values())[-limit:]

    def reply_raw(self, reply_id: str) -> dict | None:
        h = self.r.hgetall(self.k.reply(reply_id))
        return decode_reply(h) if h else None
