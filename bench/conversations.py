"""How fast a user's conversation list answers (GET /api/sessions, server side): one user with
1,000 conversations of 3 turns each among 1,000 of other users, read through the one history
reader (service/serving/conversations.py over core.history.History), first all in Redis, then
with half of them moved to the Parquet archive by the real archive run. Also the search and
reopening one conversation. Aim: the list in < 100 ms.

    python bench/conversations.py [--sessions 1000] [--runs 20]

Measured on a machine other helpers share: the median and p95 of --runs calls, each timed alone.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean, pct, table, write_json

from core.archive import Archive
from core.embedded_redis import EmbeddedRedis
from core.history import History
from core.keys import Keys
from core.redis_conn import connect
from core.settings import WorkerSettings
from service.serving.conversations import Conversations
from tests.support.archive import consume_events, log_session
from worker.archive.run import run_archive

USER = "bench-user"  # 1,000 conversations among `--others` of 50 other users
TEXT = ("A reply of a realistic length: a few sentences that explain something, with a list and a "
        "short example, the kind of answer a chat model gives to an everyday question. ") * 3


def fill(r, keys: Keys, n: int, others: int) -> list[str]:
    """n conversations of USER (half of them idle for 3 h, so the archive takes those) and
    `others` of 50 other users."""
    now, ids = time.time(), []
    for i in range(n):
        at = now - (3 * 3600 if i % 2 else 60) - i
        s = log_session(r, keys, user=USER, turns=3, at=at, text=TEXT, tokens=64)
        r.hset(keys.session_meta(s.session.session_id), "title", f"conversation {i} about topic {i % 37}")
        ids.append(s.session.session_id)
    for i in range(others):
        log_session(r, keys, user=f"other-{i % 50}", turns=1, at=now - (3 * 3600 if i % 2 else 60) - i,
                    text=TEXT, tokens=64)
    consume_events(r, keys)
    return ids


def timed(fn, runs: int) -> dict:
    """Wall time and this process's CPU time per call (the machine is shared: CPU time is what the
    call costs the server process; wall time also waits for a core and for Redis)."""
    fn()   # warm: imports (pyarrow) and connections are not what a user waits for
    times, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return {"median_ms": pct(times, 0.5), "p95_ms": pct(times, 0.95), "mean_ms": mean(times),
            "cpu_median_ms": pct(cpu, 0.5), "n": len(out)}


def measure(conv: Conversations, ids: list[str], runs: int, where: str) -> list[dict]:
    rows = [{"where": where, "call": "list (limit 200)", **timed(lambda: conv.list(USER), runs)},
            {"where": where, "call": "list (limit 1000)", **timed(lambda: conv.list(USER, limit=1000), runs)},
            {"where": where, "call": "search title 'topic 7'", **timed(lambda: conv.list(USER, "topic 7"), runs)},
            {"where": where, "call": "search text 'everyday'", **timed(lambda: conv.list(USER, "everyday"), max(3, runs // 5))},
            {"where": where, "call": "open one", **timed(lambda: conv.get(USER, ids[1])["replies"], runs)}]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--others", type=int, default=500, help="conversations of 50 other users")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        r, keys = connect(redis.url), Keys("bench:")
        t = time.perf_counter()
        ids = fill(r, keys, args.sessions, args.others)
        print(f"wrote {args.sessions + args.others} conversations in {time.perf_counter() - t:.0f} s", flush=True)
        archive = Archive(str(Path(tmp) / "archive"))
        conv = Conversations(History(r, keys, archive))
        assert len(conv.list(USER, limit=1000)) == args.sessions
        rows = measure(conv, ids, args.runs, "all in Redis")
        settings = WorkerSettings(redis_url=redis.url, prefix="bench:", data_dir=Path(tmp), hot_session_idle_s=3600,
                                  worker_abandon_idle_s=1800, hot_stream_s=600)
        moved = run_archive(r, keys, settings, archive)["moved"]
        print(f"archived {moved['sessions']} sessions", flush=True)
        assert len(conv.list(USER, limit=1000)) == args.sessions
        rows += measure(conv, ids, args.runs, "half archived")
    load = os.getloadavg()[0]
    print(table(rows, ["where", "call", "median_ms", "p95_ms", "cpu_median_ms", "n"]))
    print(f"load average during the run: {load:.1f} on {os.cpu_count()} cores")
    path = write_json("conversations", {"sessions_of_user": args.sessions, "others": args.others, "runs": args.runs,
                                        "rows": rows, "load_average": load,
                                        "note": "one call at a time, on a 2-core machine shared with other work"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
