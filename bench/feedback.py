"""Feedback intake benchmark: events/s over the websocket from N concurrent clients against
one server process, p50/p99 ack latency, and in the same run the raw rate of redis-py XADD
with pipelining against the same Redis (ratio). Verifies sent = acknowledged = stored.

    python bench/feedback.py [--clients 8] [--events 2000] [--window 16]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import psutil
import redis
import websockets
from common import live_server, pct, table, write_json


async def client(srv, user: str, reply_id_box: dict, n: int, window: int, lat: list[float]) -> int:
    async with websockets.connect(srv.ws_url, max_size=2 ** 22) as ws:
        await ws.send(json.dumps({"type": "hello", "token": srv.token(user)}))
        while json.loads(await ws.recv())["type"] != "ready":
            pass
        await ws.send(json.dumps({"type": "user_message", "text": "hi", "client_msg_id": "m"}))
        reply_id = None
        while True:
            f = json.loads(await ws.recv())
            if f["type"] == "reply_end":
                reply_id = f["reply_id"]
                break
        reply_id_box[user] = reply_id
        sent_at: dict[str, float] = {}
        acked = 0
        sem = asyncio.Semaphore(window)   # at most `window` feedbacks in flight per client

        async def reader():
            nonlocal acked
            while acked < n:
                f = json.loads(await ws.recv())
                if f["type"] == "ack":
                    lat.append(time.perf_counter() - sent_at.pop(f["feedback_id"]))
                    acked += 1
                    sem.release()
                elif f["type"] == "error":
                    raise RuntimeError(f)

        task = asyncio.create_task(reader())
        for i in range(n):
            await sem.acquire()
            fid = f"{user}-{i}"
            sent_at[fid] = time.perf_counter()
            await ws.send(json.dumps({"type": "feedback", "feedback_id": fid, "reply_id": reply_id,
                                      "kind": "dwell", "value": 10 + i % 100}))
        await task
        return acked


async def over_websocket(srv, clients: int, per_client: int, window: int):
    lat: list[float] = []
    box: dict = {}
    t0 = time.perf_counter()
    acked = await asyncio.gather(*[client(srv, f"u{i}", box, per_client, window, lat) for i in range(clients)])
    return sum(acked), lat, time.perf_counter() - t0


def raw_xadd(url: str, n: int, batch: int = 100) -> float:
    r = redis.Redis.from_url(url)
    fields = {"kind": "dwell", "value": "10", "reply_id": "rep_x", "feedback_id": "f", "user_id": "u",
              "session_id": "s", "adapter_version": "base", "server_time": "0"}
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        with r.pipeline(transaction=False) as p:
            for _ in range(min(batch, n - start)):
                p.xadd("bench:raw", fields)
            p.execute()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8, help="concurrent websocket clients")
    ap.add_argument("--events", type=int, default=4000, help="feedback events in total")
    ap.add_argument("--window", type=int, default=16, help="unacknowledged feedbacks allowed per client")
    args = ap.parse_args()
    per = args.events // args.clients
    with live_server("tiny-random", REWARDLOOP_FEEDBACK_RATE=1e6, REWARDLOOP_FEEDBACK_BURST=10 ** 6,
                     REWARDLOOP_MAX_NEW_TOKENS=4) as (srv, store):
        server_cpu, client_cpu = psutil.Process(srv.proc.pid), psutil.Process()
        cpu0 = (sum(server_cpu.cpu_times()[:2]), sum(client_cpu.cpu_times()[:2]))
        acked, lat, secs = asyncio.run(over_websocket(srv, args.clients, per, args.window))
        cpu_us = [(sum(p.cpu_times()[:2]) - c) / max(acked, 1) * 1e6 for p, c in zip((server_cpu, client_cpu), cpu0)]
        r = redis.Redis.from_url(store.url, decode_responses=True)
        stored = sum(1 for _, f in r.xrange("bench:events") if f.get("kind") == "dwell")
        raw = raw_xadd(store.url, args.events)
    sent = per * args.clients
    ws_rate = acked / secs
    rows = [{"path": "websocket feedback (acked, fsync always)", "events_s": ws_rate,
             "p50_ms": pct(lat, 0.5) * 1000, "p99_ms": pct(lat, 0.99) * 1000,
             "server_cpu_us_per_event": cpu_us[0], "client_cpu_us_per_event": cpu_us[1]},
            {"path": "redis-py XADD, pipelined x100", "events_s": raw},
            {"path": "ratio websocket / raw XADD", "events_s": ws_rate / raw}]
    print(f"\nfeedback benchmark: {args.clients} clients, window {args.window}, {sent} events")
    print(table(rows, ["path", "events_s", "p50_ms", "p99_ms", "server_cpu_us_per_event",
                       "client_cpu_us_per_event"]))
    print(f"\ncount check: sent={sent} acknowledged={acked} stored={stored} -> "
          f"{'OK' if sent == acked == stored else 'MISMATCH'}")
    path = write_json("feedback", {"args": vars(args), "rows": rows, "sent": sent, "acked": acked,
                                   "stored": stored})
    print(f"wrote {path}")
    if not sent == acked == stored:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
