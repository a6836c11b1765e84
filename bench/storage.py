"""What one reply costs in Redis, part by part, before and after the archive, and whether the
archive keeps up (issue 28).

A fresh embedded Redis and one real server (default: the default model, SmolLM2-135M, replies
of up to --tokens tokens), --clients websocket users chatting --sessions sessions of --turns
turns with realistic feedback (a dwell on every reply, a thumbs on every other, a copy on every
fifth), the reward pipeline run to final rewards. Then:

- bytes per reply in Redis, by key kind (MEMORY USAGE of every key; streams are one key each);
- one archive run (everything finished moves): what stays in Redis per reply, and the archive's
  bytes per reply per table;
- the days until a 1 / 8 / 64 GB Redis is full at 1k / 100k / 10M replies a day: before (every
  record stays) and after (Redis holds the hot window: a reply's session part stays
  REWARDLOOP_HOT_SESSION_IDLE_S + REWARDLOOP_ARCHIVE_EVERY_S after its session's last turn, its
  stream entries REWARDLOOP_HOT_STREAM_S + REWARDLOOP_ARCHIVE_EVERY_S; the defaults), and the
  archive's disk per day;
- archive throughput: the logged sessions cloned --clone-replies times with new ids, then one
  archive run timed: replies/s moved, against the serving rate this server reached.

    flock /tmp/rl-heavy.lock .venv/bin/python bench/storage.py      # bench/results/storage.json
    .venv/bin/python bench/storage.py --model tiny-random           # quick: same lengths, random text
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from bench.common import write_json  # noqa: E402
from core.embedded_redis import EmbeddedRedis  # noqa: E402
from tests.support.clients import Chat  # noqa: E402
from tests.support.processes import ServerProc, base_env, free_port  # noqa: E402

QUESTIONS = [
    "How do I make a simple tomato sauce for pasta?", "Explain what a hash table is and when to use one.",
    "What are three ways to get better sleep?", "Write a short email asking my landlord to fix the heating.",
    "What is the difference between weather and climate?", "Give me a beginner's plan to start running.",
    "How does compound interest work? Give an example.", "Summarize the causes of the French Revolution.",
    "What should I pack for a three-day hiking trip?", "How can I keep basil alive indoors?",
    "Explain recursion to a ten-year-old.", "What are good questions to ask at the end of a job interview?",
]
FOLLOW_UPS = ["Can you make that shorter?", "Why is that?", "Give me one more example.", "Thanks! Anything else?"]
GB = 1024 ** 3
CAPACITIES_GB = (1, 8, 64)
RATES = (1_000, 100_000, 10_000_000)


def chat_sessions(srv: ServerProc, sessions: int, turns: int, clients: int) -> dict:
    """Run the sessions over `clients` concurrent websocket users; -> replies, tokens, seconds."""
    lock, stats = threading.Lock(), {"replies": 0, "tokens": 0, "feedback": 0}

    def user(c: int) -> None:
        for s in range(c, sessions, clients):
            chat = Chat(srv, srv.token(f"user{s % 40}"))
            for t in range(turns):
                text = QUESTIONS[s % len(QUESTIONS)] if t == 0 else FOLLOW_UPS[(s + t) % len(FOLLOW_UPS)]
                asked = time.monotonic()
                out = chat.ask(text)
                rid, n = out["start"]["reply_id"], out["end"]["n_tokens"]
                read_ms = min(800 + 40 * len(out["text"]), int((time.monotonic() - asked) * 1000))  # what it could be
                sent = [chat.feedback(rid, "dwell", read_ms)]
                if (s + t) % 2 == 0:
                    sent.append(chat.feedback(rid, "thumbs", 1 if (s * 7 + t) % 3 else -1))
                if (s + t) % 5 == 0:
                    sent.append(chat.feedback(rid, "copy"))
                assert all(f["type"] == "ack" for f in sent), sent
                with lock:
                    stats["replies"] += 1
                    stats["tokens"] += n
                    stats["feedback"] += len(sent)
            chat.close()
    t0 = time.monotonic()
    threads = [threading.Thread(target=user, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats["seconds"] = round(time.monotonic() - t0, 1)
    stats["replies_per_s"] = round(stats["replies"] / stats["seconds"], 3)
    return stats


def by_kind(r: redis.Redis, prefix: str) -> dict[str, int]:
    """Bytes per key kind (the name after the prefix, ids left out; Celery's keys apart)."""
    out: dict[str, int] = {}
    for key in r.scan_iter(prefix + "*", count=1000):
        rest = key[len(prefix):]
        kind = "celery" if rest.startswith("celery") else rest.split(":", 1)[0]
        if kind == "fb":
            kind = "fb (derived)" if rest.startswith("fb:derived:") else "fb (feedback ids)"
        out[kind] = out.get(kind, 0) + int(r.memory_usage(key, samples=0) or 0)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def used(r: redis.Redis) -> int:
    r.execute_command("MEMORY", "PURGE")
    return int(r.info("memory")["used_memory"])


SESSION_KINDS = ("reply", "reward", "reward_signals", "session", "session_meta", "session_replies", "sessions",
                 "user_sessions", "fb (derived)", "rewards:pending")
STREAM_KINDS = ("events", "rewards", "pairs")


def days_table(before: int, hot_session: int, hot_stream: int, archive: int) -> list[dict]:
    """Days until Redis is full, before (everything stays) and after (the hot window only)."""
    from core.settings import WorkerSettings
    w = WorkerSettings()
    stay_session, stay_stream = w.hot_session_idle_s + w.archive_every_s, w.hot_stream_s + w.archive_every_s
    rows = []
    for rate in RATES:
        per_s = rate / 86400
        steady = per_s * (hot_session * stay_session + hot_stream * stay_stream)
        row = {"replies_per_day": rate, "archive_gb_per_day": round(rate * archive / GB, 3),
               "hot_window_gb": round(steady / GB, 3)}
        for cap in CAPACITIES_GB:
            row[f"before_{cap}gb_days"] = round(cap * GB / (rate * before), 2)
            row[f"after_{cap}gb_days"] = None if steady < 0.8 * cap * GB else round(cap * GB / (rate * before), 2)
        rows.append(row)
    return rows


def snapshot(r: redis.Redis, prefix: str) -> dict:
    """The logged sessions as stored (to clone them after the archive moved the originals)."""
    from core.keys import Keys
    k, out = Keys(prefix), {"sessions": [], "events": {}, "rewards": {}}
    for sid in r.zrange(k.sessions, 0, -1):
        rids = r.lrange(k.session_replies(sid), 0, -1)
        out["sessions"].append([(r.hgetall(k.reply(rid)), r.hgetall(k.reward(rid)), r.hgetall(k.reward_signals(rid)))
                                for rid in rids])
    for stream in ("events", "rewards"):
        for _, f in r.xrange(getattr(k, stream)):
            out[stream].setdefault(f.get("reply_id", ""), []).append(f)
    return out


def clone_and_archive(r: redis.Redis, url: str, snap: dict, replies: int, tmp: Path) -> dict:
    """The logged sessions copied with new ids into a fresh prefix until `replies` replies (their
    reply hashes, ledger entries, signals, session keys, events and rewards entries), made old and
    processed; then one archive run, timed."""
    import secrets

    from core.keys import Keys
    from core.settings import WorkerSettings
    from tests.support.archive import consume_events
    from worker.archive.run import run_archive
    dst = Keys("clone:")
    made, at, seq = 0, time.time() - 6 * 3600, 0
    ms = int(at * 1000)
    while made < replies and snap["sessions"]:
        with r.pipeline(transaction=False) as p:
            for records in snap["sessions"]:
                new_sid = f"s_{secrets.token_hex(8)}"
                ids = [f"rep_{secrets.token_hex(8)}" for _ in records]
                for new, (reply, entry, sig) in zip(ids, records):
                    old = reply["reply_id"]
                    p.hset(dst.reply(new), mapping=dict(reply, reply_id=new, session_id=new_sid))
                    p.hset(dst.reward(new), mapping=dict(entry, reply_id=new, session_id=new_sid))
                    if sig:
                        p.hset(dst.reward_signals(new), mapping=sig)
                    for stream in ("events", "rewards"):
                        for f in snap[stream].get(old, []):
                            seq += 1
                            p.xadd(getattr(dst, stream), dict(f, reply_id=new, session_id=new_sid), id=f"{ms}-{seq}")
                p.rpush(dst.session_replies(new_sid), *ids)
                p.rpush(dst.session(new_sid), *ids)
                p.hset(dst.session_meta(new_sid), mapping={"user_id": "u", "created": repr(at), "last_active": repr(at)})
                p.zadd(dst.sessions, {new_sid: at})
                made += len(ids)
            p.execute()
    consume_events(r, dst)
    settings = WorkerSettings(redis_url=url, prefix="clone:", data_dir=tmp / "clone")
    t0 = time.monotonic()
    out = run_archive(r, dst, settings)
    seconds = time.monotonic() - t0
    from core.archive import Archive
    stored = sum(u["bytes"] for u in Archive(settings.archive_location).usage().values())
    return {"replies": out["moved"]["replies"], "sessions": out["moved"]["sessions"],
            "archive_bytes_per_reply": round(stored / max(1, out["moved"]["replies"])),
            "stream_entries": out["moved"]["entries"], "seconds": round(seconds, 2),
            "replies_per_s": round(out["moved"]["replies"] / seconds, 1), "files": out["moved"]["files"]}


def measure(args) -> dict:
    from core.keys import Keys
    from core.settings import WorkerSettings
    from tests.service.dev_support import finalize_rewards
    from worker.archive.run import run_archive
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        tmp = Path(tmp)
        r = redis.Redis.from_url(server.url, decode_responses=True)
        env = base_env(server.url, "rl:", tmp, REWARDLOOP_MODEL=args.model, REWARDLOOP_MAX_NEW_TOKENS=args.tokens)
        srv = ServerProc(env, free_port(), tmp / "server.log").start(timeout=900)
        try:
            warm = Chat(srv, srv.token("warm"))
            warm.ask("hi")
            warm.close()
            for key in r.scan_iter("rl:*"):  # the warm-up's records out of the measurement
                r.delete(key)
            base = used(r)
            serving = chat_sessions(srv, args.sessions, args.turns, args.clients)
        finally:
            srv.stop()
        finalize_rewards(server.url, "rl:")
        r.delete(*r.keys("rl:celery*") or ["-"])
        n = serving["replies"]
        total, parts = used(r) - base, by_kind(r, "rl:")
        settings = WorkerSettings(redis_url=server.url, prefix="rl:", data_dir=tmp, hot_session_idle_s=1.0,
                                  worker_abandon_idle_s=0.5, hot_stream_s=1.0)
        snap = snapshot(r, "rl:")
        time.sleep(1.5)
        moved = run_archive(r, Keys("rl:"), settings)
        parts_after = by_kind(r, "rl:")
        from core.archive import Archive
        usage = Archive(settings.archive_location).usage()
        throughput = clone_and_archive(r, server.url, snap, args.clone_replies, tmp)
        r.close()
    per = {k: round(v / n) for k, v in parts.items()}
    return {"model": args.model, "max_new_tokens": args.tokens, "serving": serving, "moved": moved["moved"],
            "redis_bytes_per_reply": round(total / n), "redis_bytes_per_reply_by_kind": per,
            "redis_bytes_per_reply_by_key_sum": round(sum(parts.values()) / n),
            "redis_bytes_per_reply_after_archive": round(sum(parts_after.values()) / n),
            "redis_bytes_per_reply_after_by_kind": {k: round(v / n) for k, v in parts_after.items()},
            "archive_bytes_per_reply": round(sum(u["bytes"] for u in usage.values()) / n),
            "archive_bytes_per_reply_by_table": {t: round(u["bytes"] / n) for t, u in usage.items()},
            "hot_session_bytes_per_reply": sum(v for k, v in per.items() if k in SESSION_KINDS),
            "hot_stream_bytes_per_reply": sum(v for k, v in per.items() if k in STREAM_KINDS),
            "throughput": throughput}


def markdown(m: dict) -> str:
    """The docs' tables (docs/data.md, docs/benchmarks.md) from one result."""
    def days(v) -> str:
        return "never" if v is None else f"{v:,.2f}" if v < 10 else f"{v:,.0f}"
    lines = ["| part (key kind) | bytes per reply |", "| --- | ---: |"]
    lines += [f"| `{k}` | {v:,} |" for k, v in m["redis_bytes_per_reply_by_kind"].items() if v]
    lines += [f"| **total (MEMORY USAGE of the keys)** | **{m['redis_bytes_per_reply_by_key_sum']:,}** |",
              f"| total (used_memory growth) | {m['redis_bytes_per_reply']:,} |", "",
              "| replies a day | " + " | ".join(f"{c} GB before" for c in CAPACITIES_GB) + " | "
              + " | ".join(f"{c} GB after" for c in CAPACITIES_GB) + " | hot window | archive a day |",
              "| ---: |" + " ---: |" * (2 * len(CAPACITIES_GB) + 2)]
    for row in m["days_to_full"]:
        before = " | ".join(days(row[f"before_{c}gb_days"]) for c in CAPACITIES_GB)
        after = " | ".join(days(row[f"after_{c}gb_days"]) for c in CAPACITIES_GB)
        lines.append(f"| {row['replies_per_day']:,} | {before} | {after} | {row['hot_window_gb']} GB | "
                     f"{row['archive_gb_per_day']} GB |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2 (default) or tiny-random")
    ap.add_argument("--tokens", type=int, default=256, help="REWARDLOOP_MAX_NEW_TOKENS (default 256, the default)")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--clients", type=int, default=4, help="concurrent websocket users (default 4)")
    ap.add_argument("--clone-replies", type=int, default=5000, help="replies for the archive throughput run")
    ap.add_argument("--name", default="storage", help="bench/results/NAME.json")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    m = measure(args)
    m["days_to_full"] = days_table(m["redis_bytes_per_reply"], m["hot_session_bytes_per_reply"],
                                   m["hot_stream_bytes_per_reply"], m["throughput"]["archive_bytes_per_reply"])
    tp = m["throughput"]
    m["archive_vs_serving"] = round(tp["replies_per_s"] / m["serving"]["replies_per_s"], 1)
    s = m["serving"]
    print(f"{s['replies']} replies ({s['tokens'] / s['replies']:.0f} tokens each, {args.model}), "
          f"{s['replies_per_s']} replies/s served by one server")
    print(f"Redis bytes per reply: {m['redis_bytes_per_reply']} before the archive, "
          f"{m['redis_bytes_per_reply_after_archive']} after it moved everything finished")
    for k, v in m["redis_bytes_per_reply_by_kind"].items():
        print(f"  {k:<20} {v:>8}")
    print(f"archive bytes per reply: {m['archive_bytes_per_reply']} {m['archive_bytes_per_reply_by_table']} "
          f"(files of this run's {s['replies']} replies); {tp['archive_bytes_per_reply']} in the "
          f"{tp['replies']}-reply throughput run's larger files")
    print(f"archive throughput: {tp['replies_per_s']} replies/s ({tp['replies']} replies, {tp['seconds']} s) = "
          f"{m['archive_vs_serving']}x this server's serving rate")
    print("days until Redis is full (after: None = never, the hot window fits under 80 %)")
    for row in m["days_to_full"]:
        print("  " + ", ".join(f"{k} {v}" for k, v in row.items()))
    print(markdown(m))
    print(f"wrote {write_json(args.name, m)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
