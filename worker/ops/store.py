"""Redis side of the operator series and the drift monitor: the one writer of the `ops:*`
keys (service/keys.py), and the reads the /ops page, /metrics and `rewardloop drift` share.

A fold commits every increment, the detector states, new alarms and the stream cursors in one
MULTI under WATCH of the cursors: a fold that raced another (two workers, a redelivered task)
is discarded whole, so each stream entry counts exactly once.
"""
from __future__ import annotations

import json
import time
from typing import Iterable, Mapping

import redis

from core.keys import Keys
from core.server_load import parse_all
from worker.ops import series

MINUTE, HOUR = 60, 3600
VERSION_REWARDS_KEPT = 10_000  # per version: enough for the comparison, bounded memory
ALARMS_KEPT = 10_000
MEMORY_ALERT_RATIO = 0.8  # Redis used_memory / maxmemory at which /ops and Prometheus raise the alert
STREAMS = ("rewards", "events")


class OpsStore:
    def __init__(self, client: redis.Redis, keys: Keys, minute_ttl_s: float = 86400.0,
                 hour_ttl_s: float = 30 * 86400.0):
        self.r = client  # decode_responses=True
        self.k = keys
        self.ttl = {MINUTE: int(minute_ttl_s), HOUR: int(hour_ttl_s)}

    def _stream_key(self, stream: str) -> str:
        return self.k.rewards if stream == "rewards" else self.k.events

    # --- folding ------------------------------------------------------------------------
    def cursors(self) -> dict[str, str]:
        vals = self.r.mget([self.k.ops_cursor(s) for s in STREAMS])
        return {s: v or "0-0" for s, v in zip(STREAMS, vals)}

    def read_after(self, stream: str, cursor: str, count: int) -> list[tuple[str, dict]]:
        return self.r.xrange(self._stream_key(stream), f"({cursor}" if cursor != "0-0" else "-", "+", count=count)

    def reply_facts(self, reply_ids: Iterable[str], text_ids: Iterable[str] = ()
                    ) -> dict[str, tuple[float | None, int]]:
        """reply_id -> (ended_at, word count of the text): the end for the reward latency, the
        words (read only for `text_ids`: replies with a dwell event) for the dwell ratio."""
        with_text = set(text_ids)
        ids = list(dict.fromkeys([*reply_ids, *with_text]))
        if not ids:
            return {}
        with self.r.pipeline(transaction=False) as p:
            for rid in ids:
                p.hmget(self.k.reply(rid), *(("ended_at", "text") if rid in with_text else ("ended_at",)))
            rows = p.execute()
        out = {}
        for rid, row in zip(ids, rows):
            try:
                ended_at = float(row[0]) if row[0] else None
            except ValueError:
                ended_at = None
            out[rid] = (ended_at, len((row[1] or "").split()) if len(row) > 1 else 0)
        return out

    def reply_texts(self, reply_ids: Iterable[str]) -> dict[str, str]:
        """reply_id -> the logged text (for the style monitors)."""
        ids = list(dict.fromkeys(reply_ids))
        if not ids:
            return {}
        with self.r.pipeline(transaction=False) as p:
            for rid in ids:
                p.hget(self.k.reply(rid), "text")
            return {rid: t for rid, t in zip(ids, p.execute()) if t is not None}

    def commit_fold(self, old: Mapping[str, str], new: Mapping[str, str], *, buckets: Mapping[tuple[int, int], dict],
                    totals: Mapping[str, float], version_rewards: Mapping[str, list[float]],
                    detectors: Mapping[str, dict], alarms: list[dict]) -> bool:
        """Apply one fold atomically if no other fold moved the cursors since `old`."""
        cursor_keys = [self.k.ops_cursor(s) for s in STREAMS]
        with self.r.pipeline(transaction=True) as p:
            try:
                p.watch(*cursor_keys)
                current = p.mget(cursor_keys)
                if [c or "0-0" for c in current] != [old[s] for s in STREAMS]:
                    return False
                p.multi()
                for (step, start), inc in buckets.items():
                    key = self.k.ops_bucket(step, start)
                    for name, value in inc.items():
                        p.hincrbyfloat(key, name, value)
                    p.expire(key, self.ttl[step])
                for name, value in totals.items():
                    p.hincrbyfloat(self.k.ops_totals, name, value)
                for version, values in version_rewards.items():
                    if values:
                        key = self.k.ops_version_rewards(version)
                        p.rpush(key, *[repr(v) for v in values])
                        p.ltrim(key, -VERSION_REWARDS_KEPT, -1)
                if detectors:
                    p.hset(self.k.ops_detectors, mapping={m: json.dumps(s) for m, s in detectors.items()})
                for alarm in alarms:
                    self._xadd_alarm(p, alarm)
                for s in STREAMS:
                    p.set(self.k.ops_cursor(s), new[s])
                p.execute()
                return True
            except redis.WatchError:
                return False

    def _xadd_alarm(self, p, alarm: dict) -> None:
        fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in alarm.items() if v is not None}
        p.xadd(self.k.ops_alarms, fields, maxlen=ALARMS_KEPT, approximate=True)
        p.hincrbyfloat(self.k.ops_totals, series.field(f"alarms:{alarm['detector']}:{alarm['metric']}",
                                                       series.ALL), 1)

    def add_alarm(self, alarm: dict) -> None:
        with self.r.pipeline(transaction=True) as p:
            self._xadd_alarm(p, alarm)
            p.execute()

    def snapshot_depths(self, now: float) -> dict[str, int]:
        """Write the current pending and dead-letter depths into this minute's and hour's
        buckets (a gauge: the last write of the bucket wins)."""
        depths = self.depths()
        fields = {series.field("pending_depth", series.ALL): depths["pending"],
                  series.field("dead_letters_depth", series.ALL): depths["dead_letters"]}
        with self.r.pipeline(transaction=False) as p:
            for step in (MINUTE, HOUR):
                key = self.k.ops_bucket(step, series.floor_to(now, step))
                p.hset(key, mapping=fields)
                p.expire(key, self.ttl[step])
            p.execute()
        return depths

    def servers(self) -> dict:
        """Server id -> its latest heartbeat (core.server_load.ServerLoad)."""
        return parse_all(self.r.hgetall(self.k.servers))

    def fold_servers(self, now: float) -> dict[str, float]:
        """Add what each chat server's counters grew since the last fold to this minute's and
        hour's buckets and to the totals (`chat_*|*`); forget servers that are gone. One
        transaction under WATCH of the seen counters: a fold that raced another is dropped."""
        with self.r.pipeline(transaction=True) as p:
            try:
                p.watch(self.k.ops_servers_seen)
                seen = {sid: json.loads(raw) for sid, raw in p.hgetall(self.k.ops_servers_seen).items()}
                loads = parse_all(p.hgetall(self.k.servers))
                inc: dict[str, float] = {}
                for sid, load in loads.items():
                    for name, value in series.chat_increments(seen.get(sid, {}), load.counters).items():
                        inc[name] = inc.get(name, 0.0) + value
                p.multi()
                for step in (MINUTE, HOUR):
                    key = self.k.ops_bucket(step, series.floor_to(now, step))
                    for name, value in inc.items():
                        p.hincrbyfloat(key, name, value)
                    p.expire(key, self.ttl[step])
                for name, value in inc.items():
                    p.hincrbyfloat(self.k.ops_totals, name, value)
                if loads:
                    p.hset(self.k.ops_servers_seen, mapping={sid: json.dumps(ld.counters) for sid, ld in loads.items()})
                gone = [sid for sid in seen if sid not in loads]
                if gone:
                    p.hdel(self.k.ops_servers_seen, *gone)
                p.execute()
                return inc
            except redis.WatchError:
                return {}

    def count(self, counter: str, n: float = 1.0) -> None:
        self.r.hincrbyfloat(self.k.ops_totals, series.field(counter, series.ALL), n)

    # --- the drift monitor's other state ----------------------------------------------------
    def detector_states(self) -> dict[str, dict]:
        return {m: json.loads(s) for m, s in self.r.hgetall(self.k.ops_detectors).items()}

    def version_rewards(self, version: str) -> list[float]:
        return [float(x) for x in self.r.lrange(self.k.ops_version_rewards(version), 0, -1)]

    def verdicts(self) -> dict[str, dict]:
        return {v: json.loads(s) for v, s in self.r.hgetall(self.k.ops_verdicts).items()}

    def set_verdict(self, version: str, verdict: dict) -> None:
        self.r.hset(self.k.ops_verdicts, version, json.dumps(verdict))

    # --- reads for /ops, /metrics and the CLI ----------------------------------------------
    def buckets(self, step_s: int, since: float, until: float) -> list[tuple[int, dict]]:
        starts = list(range(series.floor_to(since, step_s), series.floor_to(until, step_s) + 1, step_s))
        with self.r.pipeline(transaction=False) as p:
            for t in starts:
                p.hgetall(self.k.ops_bucket(step_s, t))
            rows = p.execute()
        return list(zip(starts, rows))

    def totals(self) -> dict[str, str]:
        return self.r.hgetall(self.k.ops_totals)

    def alarms(self, since: float | None = None, count: int = 200) -> list[dict]:
        start = f"{int(since * 1000)}-0" if since else "-"
        rows = self.r.xrevrange(self.k.ops_alarms, "+", start, count=count)
        return [_decode_alarm(sid, f) for sid, f in rows]

    def timeline(self, count: int = 200) -> dict[str, list[dict]]:
        """Registry history (publish/promote/rollback) and server swap reports, newest first."""
        return {"history": [dict(f, id=sid) for sid, f in self.r.xrevrange(self.k.adapter_history, count=count)],
                "swaps": [dict(f, id=sid) for sid, f in self.r.xrevrange(self.k.adapter_swaps, count=count)]}

    def depths(self) -> dict[str, int]:
        with self.r.pipeline(transaction=False) as p:
            p.zcard(self.k.rewards_pending)
            p.xlen(self.k.dead_letters)
            pending, dead = p.execute()
        return {"pending": int(pending), "dead_letters": int(dead)}

    def storage(self) -> dict:
        """Redis memory now and the archive task's last run (worker/archive writes its status): what
        the /ops storage line and the memory and archive alerts read."""
        info = self.r.info("memory")
        used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
        status = self.r.hgetall(self.k.archive_status)

        def num(name: str) -> float | None:
            try:
                return float(status[name]) if status.get(name) not in (None, "") else None
            except ValueError:
                return None
        return {"redis_used": used, "redis_max": limit, "redis_ratio": used / limit if limit else None,
                "memory_alert": bool(limit) and used / limit >= MEMORY_ALERT_RATIO,
                "archive": {"ran": bool(status), "ok": status.get("ok") != "0" if status else None,
                            "error": status.get("error"), "failing_since": num("failing_since"),
                            "last_ok_at": num("last_ok_at"), "at": num("at"), "location": status.get("location"),
                            "files": num("archive_files"), "bytes": num("archive_bytes"),
                            "sessions_moved": num("total_sessions"), "replies_moved": num("total_replies")}}

    def lag_s(self) -> float | None:
        """Seconds since the newest rewards entry that is not folded yet (None: all folded)."""
        cursor = self.cursors()["rewards"]
        rows = self.read_after("rewards", cursor, 1)
        return time.time() - int(rows[0][0].split("-")[0]) / 1000 if rows else None


    def flagged_users(self, limit: int = 50) -> list[dict]:
        """(/ops) Users weighted below 1 now, most recently flagged first (of the last `limit` ever flagged),
        with their weights and reasons."""
        ids = self.r.zrevrange(self.k.flagged_users, 0, limit - 1, withscores=True)
        with self.r.pipeline(transaction=False) as p:
            for uid, _ in ids:
                p.hmget(self.k.user(uid), "anomaly_weight", "anomaly_reason", "unsafe_voter_weight",
                        "unsafe_voter_reason")
            rows = p.execute()
        out = [{"user_id": uid, "since": at, "anomaly_weight": float(a or 1), "anomaly_reason": ar or "",
                "unsafe_voter_weight": float(u or 1), "unsafe_voter_reason": ur or ""}
               for (uid, at), (a, ar, u, ur) in zip(ids, rows)]
        return [u for u in out if min(u["anomaly_weight"], u["unsafe_voter_weight"]) < 1.0]


def _decode_alarm(sid: str, fields: dict) -> dict:
    out = dict(fields, id=sid)
    for name in ("evidence", "at", "since", "until", "statistic", "threshold"):
        if name in out:
            try:
                out[name] = json.loads(out[name])
            except ValueError:
                pass
    return out
