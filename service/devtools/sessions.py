"""Logged sessions as developers see them: the one developer-tools module that reads Redis.

A session's detail puts together what several writers left: the session meta and reply lists
(server), each reply hash (server), the feedback events of the `events` stream (server), the
ledger entry and signals of each reply (reward workers) and the preference pairs (workers).
`sessions list|show|export`, `replay`, the admin endpoints and `evaluate` all read through
`SessionLog`, so they agree on what a session is; it reads through core.history.History, so a
session still in Redis, already in the archive, or half in each reads the same. Synchronous
redis client with `decode_responses=True`.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from core import versions
from core.archive import Archive
from core.history import History
from core.keys import Keys
from core.records import SessionRecord, reply_dict

RAW_FIELDS = ("prompt_ids", "token_ids", "logprobs")  # big arrays: only in raw exports and replay
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SCAN_CAP = 10_000  # most sessions one list call looks at (newest first)
LIST_CHUNK = 100  # sessions summarized per batch of reads
MAX_SEQ = 2 ** 64 - 1  # the largest sequence part of a stream id


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
    out = {"stream_id": stream_id, "kind": f.get("kind", ""), "value": value, "event_id": f.get("event_id"),
           "feedback_id": f.get("feedback_id"), "server_time": float(at) if at else None,
           "client_time": f.get("client_time"), "since_reply_end_ms": f.get("since_reply_end_ms"),
           "derived": bool(f.get("derived"))}
    try:
        out["tags"] = json.loads(f["tags"]) if f.get("tags") else []
    except ValueError:
        out["tags"] = []
    out["comment"] = f.get("comment") or ""
    if f.get("how"):
        out["how"] = f["how"]   # a derived sibling preference: what the user did
    return out


class SessionLog:
    """Sessions read through core.history.History: Redis first, then the archive, as one."""

    def __init__(self, r: redis.Redis, keys: Keys, archive: Archive | None = None):
        self.r = r  # decode_responses=True
        self.k = keys
        self.history = History(r, keys, archive)

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
    def list(self, flt: SessionFilter) -> list[dict]:
        """Summaries of matching sessions, newest first."""
        out = []
        candidates = self.history.sessions(user=flt.user, since=flt.since, limit=SCAN_CAP)
        for i in range(0, len(candidates), LIST_CHUNK):
            for s in self._summaries(candidates[i:i + LIST_CHUNK]):
                if self._matches(s, flt):
                    out.append(s)
                    if len(out) >= flt.limit:
                        return out
        return out

    @staticmethod
    def _matches(s: dict, flt: SessionFilter) -> bool:
        if flt.adapter is not None and flt.adapter not in s["adapters"]:
            return False
        if flt.min_reward is not None and (s["mean_reward"] is None or s["mean_reward"] < flt.min_reward):
            return False
        return True

    def summary(self, session_id: str) -> dict | None:
        session = self.history.session(session_id)
        return self._summaries([session])[0] if session is not None else None

    def _summaries(self, sessions: list[SessionRecord]) -> list[dict]:
        ids = [rid for s in sessions for rid in s.replies]
        replies, ledger = self.history.replies(ids), self.history.ledger(ids)
        users: dict[str, str | None] = {}
        out = []
        for s in sessions:
            recs = [replies[rid] for rid in s.replies if rid in replies]
            rewards = [e.reward for rid in s.replies if (e := ledger.get(rid)) is not None
                       and e.state in ("rewarded", "defaulted") and e.reward is not None]
            token_opt_out = any(r.opt_out for r in recs)  # a token made with --opt-out
            user = s.user_id or ""
            if user not in users:
                users[user] = self.excluded(user)
            out.append({"session_id": s.session_id, "user_id": user, "created": s.created or 0.0,
                        "last_active": s.last_active or 0.0, "turns": len(s.history or []),
                        "replies": len(s.replies or []),
                        "adapters": sorted({r.adapter_version for r in recs if r.adapter_version},
                                           key=lambda v: (not versions.is_base(v), v.zfill(8))),
                        "rewarded": len(rewards), "mean_reward": sum(rewards) / len(rewards) if rewards else None,
                        "excluded": users[user] or ("opted out" if token_opt_out else None)})
        return out

    # --- one session ------------------------------------------------------------------
    def events(self, session_id: str, since: float) -> list[tuple[str, dict]]:
        """Events of the session (feedback, derived continuation/abandon), from the session's
        creation on, wherever they are now (Redis or the archive)."""
        return [(e.stream_id, e.to_redis()) for e in self.history.events(session_id, since) if e.kind != "reply"]

    def pairs(self, reply_ids: set[str]) -> list[dict]:
        """Preference pairs (workers' `pairs` stream) between replies of this set."""
        return [dict(p.to_redis(), stream_id=p.stream_id) for p in self.history.pairs()
                if p.chosen_id in reply_ids and p.rejected_id in reply_ids]

    def detail(self, session_id: str, raw: bool = False) -> dict | None:
        """Every reply of the session in the order generated, each with its user text, prompt,
        version, sampling params, feedback events with times, and final reward with components.
        raw=True keeps the token ids, prompt ids and behavior log-probs."""
        session = self.history.session(session_id)
        if session is None:
            return None
        summary = self._summaries([session])[0]
        rids = list(session.replies or [])
        history = set(session.history or [])
        days = self.history.session_day(session)
        replies, ledger = self.history.replies(rids, days), self.history.ledger(rids, days)
        by_reply: dict[str, list[dict]] = {rid: [] for rid in rids}
        for stream_id, f in self.events(session_id, summary["created"]):
            ev = _event(stream_id, f)
            if f.get("reply_id") in by_reply:
                by_reply[f["reply_id"]].append(ev)
            if ev["kind"] in ("choose", "sibling") and isinstance(ev["value"], str) and ev["value"] in by_reply:
                by_reply[ev["value"]].append(dict(ev, role="rejected"))
        out = []
        for rid in rids:
            rec = reply_dict(replies[rid]) if rid in replies else {"reply_id": rid, "missing": True}
            rec["in_history"] = rid in history
            logps = rec.get("logprobs")
            rec["behavior_logp"] = sum(logps) if isinstance(logps, list) else None
            if not raw:
                for k in RAW_FIELDS:
                    rec.pop(k, None)
            rec["events"] = by_reply[rid]
            entry = ledger.get(rid)
            rec["reward"] = decode_reward(entry.to_redis(), list((entry.signals or {}).values())) if entry else None
            out.append(rec)
        return dict(summary, replies=out, pairs=self.pairs(set(rids)))

    def session_of_reply(self, reply_id: str) -> str | None:
        return self.history.session_of_reply(reply_id)

    # --- logged rewards (evaluate) ----------------------------------------------------
    def final_rewards(self, since: float | None, limit: int) -> list[dict]:
        """The newest final rewards (rewards stream), at most `limit`, finalized at or after
        `since`; one per reply (the first final reward wins, as in the learner)."""
        after = f"{int(since * 1000) - 1}-{MAX_SEQ}" if since else None
        seen: dict[str, dict] = {}
        for e in self.history.rewards(after=after):
            rid = e.reply_id or ""
            if rid and rid not in seen and e.state in ("rewarded", "defaulted") and e.reward is not None:
                seen[rid] = dict(e.to_redis(), stream_id=e.stream_id)
        return list(seen.values())[-limit:]

    def reply_raw(self, reply_id: str) -> dict | None:
        rec = self.history.reply(reply_id)
        return reply_dict(rec) if rec else None
