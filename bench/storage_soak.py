"""The bounded soak of issue 28: simulated users chat and give feedback for --minutes (10)
against the tiny model, as fast as it serves, with a 2-minute hot window; the real worker and
beat archive what is finished.

Aims (printed, and kept in bench/results/storage_soak.json):
- Redis `used_memory` levels off: the last third of the run stays within +-10 % of its mean;
- the archive grows;
- every acknowledged feedback and every logged reply is found exactly once, in Redis or the
  archive (through core.history.History, the readers' one interface);
- bytes per reply in Redis before the first archive run moved anything, and at the end.

    flock /tmp/rl-heavy.lock .venv/bin/python bench/storage_soak.py [--minutes 10] [--clients 12]
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402
import websockets  # noqa: E402

from bench.common import write_json  # noqa: E402
from core.embedded_redis import EmbeddedRedis  # noqa: E402
from tests.support.processes import ServerProc, base_env, free_port  # noqa: E402

HOT = {"REWARDLOOP_ARCHIVE_EVERY_S": "10", "REWARDLOOP_HOT_SESSION_IDLE_S": "120", "REWARDLOOP_HOT_STREAM_S": "120",
       "REWARDLOOP_WORKER_ABANDON_IDLE_S": "60", "REWARDLOOP_WORKER_ABANDON_EVERY_S": "5",
       "REWARDLOOP_WORKER_FINALIZE_EVERY_S": "2", "REWARDLOOP_OPS_EVERY_S": "5", "REWARDLOOP_MAX_NEW_TOKENS": "64"}
REWARD_TOML = "wait_window_s = 30.0\ncontinuation_window_s = 30.0\n"


async def user(srv: ServerProc, i: int, until: float, log: dict) -> None:
    """Sessions of three turns, each on a fresh connection; thumbs, dwell and a copy on each reply."""
    ids = itertools.count()
    while time.monotonic() < until:
        async with websockets.connect(srv.ws_url, max_size=2 ** 22, open_timeout=120) as ws:
            await ws.send(json.dumps({"type": "hello", "token": srv.token(f"soak{i}")}))
            while json.loads(await asyncio.wait_for(ws.recv(), 120))["type"] != "ready":
                pass
            for turn in range(3):
                if time.monotonic() >= until:
                    break
                await ws.send(json.dumps({"type": "user_message", "text": f"question {turn} from user {i}",
                                          "client_msg_id": f"c{i}-{next(ids)}"}))
                reply_id = await _reply(ws, log)
                if reply_id is not None:
                    await _feedback(ws, i, reply_id, ids, log)


async def _reply(ws, log: dict) -> str | None:
    reply_id = None
    while True:
        f = json.loads(await asyncio.wait_for(ws.recv(), 120))
        if f["type"] == "reply_start":
            reply_id = f["reply_id"]
        elif f["type"] == "reply_end":
            log["replies"].append(reply_id)
            return reply_id
        elif f["type"] == "error":
            log["errors"][f["code"]] += 1
            await asyncio.sleep(1.0)
            return None


async def _feedback(ws, i: int, reply_id: str, ids, log: dict) -> None:
    sent = {}
    for kind, value in (("thumbs", 1 if i % 2 else -1), ("dwell", 1500), ("copy", None)):
        fid = f"f{i}-{next(ids)}"
        frame = {"type": "feedback", "feedback_id": fid, "reply_id": reply_id, "kind": kind}
        if value is not None:
            frame["value"] = value
        await ws.send(json.dumps(frame))
        sent[fid] = kind
    while sent:
        f = json.loads(await asyncio.wait_for(ws.recv(), 120))
        if f["type"] == "ack":
            sent.pop(f["feedback_id"])
            log["acked"].append((f"soak{i}", f["feedback_id"]))
        elif f["type"] == "error":
            log["errors"][f["code"]] += 1
            sent.pop(f.get("ref"), None)


def _archive_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.parquet")) if root.exists() else 0


async def sample(r: redis.Redis, root: Path, until: float, samples: list, log: dict) -> None:
    t0 = time.monotonic()
    while time.monotonic() < until:
        info = r.info("memory")
        samples.append({"t": round(time.monotonic() - t0, 1), "used_memory": int(info["used_memory"]),
                        "archive_bytes": _archive_bytes(root), "replies": len(log["replies"]),
                        "sessions_hot": r.zcard("soak:sessions"), "events_hot": r.xlen("soak:events")})
        await asyncio.sleep(5)


def check(r: redis.Redis, root: Path, log: dict) -> dict:
    """Every logged reply and every acknowledged feedback, found exactly once."""
    from core.archive import Archive
    from core.history import History
    from core.keys import Keys
    from core.records import EventRecord, ReplyRecord
    archive = Archive(root)
    h = History(r, Keys("soak:"), archive)
    found = h.replies(log["replies"])
    events = h.events()
    by_fid = Counter((e.user_id, e.feedback_id) for e in events if e.feedback_id)
    raw_rows = archive.read(ReplyRecord, columns=["reply_id"])["reply_id"].to_pylist()
    in_redis = {rid for rid in log["replies"] if r.exists(f"soak:reply:{rid}")}
    raw_events = archive.read(EventRecord, columns=["stream_id"])["stream_id"].to_pylist()
    return {"replies_logged": len(log["replies"]), "replies_found": sum(rid in found for rid in log["replies"]),
            "replies_in_redis": len(in_redis), "replies_in_archive": len(set(raw_rows)),
            "replies_in_both": len(in_redis & set(raw_rows)),
            "archive_reply_rows_duplicated": len(raw_rows) - len(set(raw_rows)),
            "archive_event_rows_duplicated": len(raw_events) - len(set(raw_events)),
            "feedback_acked": len(log["acked"]),
            "feedback_found_once": sum(by_fid[k] == 1 for k in log["acked"]),
            "feedback_found_more": sum(by_fid[k] > 1 for k in log["acked"]),
            "events_read": len(events)}


def run(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        tmp = Path(tmp)
        (tmp / "reward.toml").write_text(REWARD_TOML)
        env = base_env(server.url, "soak:", tmp / "data", REWARDLOOP_REWARD_CONFIG=tmp / "reward.toml", **HOT)
        (tmp / "data").mkdir()
        r = redis.Redis.from_url(server.url, decode_responses=True)
        srv = ServerProc(env, free_port(), tmp / "server.log", prefix="soak:").start(timeout=300)
        procs = [subprocess.Popen([sys.executable, "-m", "service.cli", *argv], env=env, cwd=REPO,
                                  stdout=open(tmp / f"{argv[0]}.log", "wb"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
                 for argv in (["worker", "--queues", "rewards,ops", "--concurrency", "1"], ["beat"])]
        try:
            log = {"replies": [], "acked": [], "errors": Counter()}
            samples: list[dict] = []
            base = int(r.info("memory")["used_memory"])

            async def main():
                until = time.monotonic() + args.minutes * 60
                await asyncio.gather(sample(r, tmp / "data" / "archive", until + 2, samples, log),
                                     *(user(srv, i, until, log) for i in range(args.clients)))
            t0 = time.monotonic()
            asyncio.run(main())
            seconds = time.monotonic() - t0
            found = check(r, tmp / "data" / "archive", log)
            status = r.hgetall("soak:archive:status")
        finally:
            srv.stop()
            for p in procs:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
    return summarize(args, samples, base, log, found, status, seconds)


def summarize(args, samples: list[dict], base: int, log: dict, found: dict, status: dict, seconds: float) -> dict:
    last = samples[len(samples) * 2 // 3:]
    mem = [s["used_memory"] for s in last]
    mean = sum(mem) / len(mem)
    spread = max(abs(m - mean) / mean for m in mem)
    first_move = next((s for s in samples if s["archive_bytes"] > 0 and s["replies"]), samples[-1])
    before = (first_move["used_memory"] - base) / max(1, first_move["replies"])
    end = samples[-1]
    after_hot = (end["used_memory"] - base) / max(1, end["replies"])
    aims = {"memory_levels_off": spread <= 0.10, "archive_grows": last[-1]["archive_bytes"] > last[0]["archive_bytes"],
            "every_reply_once": found["replies_found"] == found["replies_logged"],
            "every_feedback_once": found["feedback_found_once"] == found["feedback_acked"]}
    return {"minutes": args.minutes, "clients": args.clients, "seconds": round(seconds), "hot_window": HOT,
            "replies": len(log["replies"]), "replies_per_s": round(len(log["replies"]) / seconds, 2),
            "errors": dict(log["errors"]), "last_third_mean_used_memory": round(mean),
            "last_third_max_deviation": round(spread, 4), "bytes_per_reply_before_archiving": round(before),
            "bytes_per_reply_at_end": round(after_hot), "archive_bytes_end": end["archive_bytes"],
            "archive_bytes_per_reply": round(end["archive_bytes"] / max(1, end["replies"])),
            "found": found, "archive_status": status, "aims": aims, "samples": samples}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--name", default="storage_soak")
    args = ap.parse_args()
    out = run(args)
    print(f"{out['replies']} replies in {out['seconds']} s ({out['replies_per_s']}/s), errors {out['errors']}")
    print(f"Redis used_memory, last third: mean {out['last_third_mean_used_memory']:,} B, max deviation "
          f"{100 * out['last_third_max_deviation']:.1f} %")
    print(f"bytes per reply in Redis: {out['bytes_per_reply_before_archiving']:,} before the first archive run, "
          f"{out['bytes_per_reply_at_end']:,} at the end; archive {out['archive_bytes_end']:,} B "
          f"({out['archive_bytes_per_reply']} B per reply)")
    print(f"found: {out['found']}")
    print(f"aims: {out['aims']}")
    print(f"wrote {write_json(args.name, out)}")
    return 0 if all(out["aims"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
