"""A bounded soak: 50 concurrent websocket clients chat and give feedback for 60 s against
the tiny model. Every feedback sent gets exactly one answer; sent = acked = stored; the only
error frames are `busy`; the server's resident memory stays within RSS_GROWTH_MB of what it
was after warm-up. (Bounds are generous: the machine's 2 cores are shared.)"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter

import pytest
import websockets

from core.keys import Keys

pytestmark = pytest.mark.integration
CLIENTS = 50
DURATION_S = 60
RSS_GROWTH_MB = 300


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def client(srv, i: int, until: float, tally: Counter, errors: Counter, fids: list[str]) -> None:
    ids = itertools.count()
    async with websockets.connect(srv.ws_url, max_size=2 ** 22, open_timeout=120) as ws:
        await ws.send(json.dumps({"type": "hello", "token": srv.token(f"soak{i}")}))
        while json.loads(await asyncio.wait_for(ws.recv(), 120))["type"] != "ready":
            pass
        while time.monotonic() < until:
            await ws.send(json.dumps({"type": "user_message", "text": f"question {next(ids)} from {i}",
                                      "client_msg_id": f"c{i}-{next(ids)}"}))
            reply_id = None
            while True:
                f = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if f["type"] == "reply_start":
                    reply_id = f["reply_id"]
                elif f["type"] == "reply_end":
                    tally["replies"] += 1
                    break
                elif f["type"] == "error":
                    errors[f["code"]] += 1
                    if f["code"] == "busy":                 # come back later, as the page does
                        await asyncio.sleep(min(float(f.get("retry_after") or 0.5), 2.0))
                    break
            if reply_id is None:
                continue
            mine = []
            for kind, value in (("thumbs", 1 if i % 2 else -1), ("dwell", 50), ("copy", None)):
                fid = f"f{i}-{next(ids)}"
                frame = {"type": "feedback", "feedback_id": fid, "reply_id": reply_id, "kind": kind}
                if value is not None:
                    frame["value"] = value
                await ws.send(json.dumps(frame))
                mine.append(fid)
            tally["sent"] += len(mine)
            fids.extend(mine)
            pending = set(mine)
            while pending:
                f = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if f["type"] == "ack":
                    assert f["feedback_id"] in pending, f"unexpected or second ack {f}"
                    pending.discard(f["feedback_id"])
                    tally["acked"] += 1
                elif f["type"] == "error":
                    errors[f["code"]] += 1
                    pending.discard(f.get("ref"))


def test_fifty_clients_for_a_minute(server_factory, rdb):
    srv = server_factory(REWARDLOOP_MAX_NEW_TOKENS=12)
    from tests.support.clients import Chat
    Chat(srv, srv.token("warmup")).ask("warm up")
    start_rss = rss_mb(srv.proc.pid)
    tally, errors, fids = Counter(), Counter(), []
    peak = [start_rss]

    async def main():
        until = time.monotonic() + DURATION_S
        async def sample():
            while time.monotonic() < until + 5:
                peak[0] = max(peak[0], rss_mb(srv.proc.pid))
                await asyncio.sleep(1)
        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(client(srv, i, until, tally, errors, fids) for i in range(CLIENTS)))
        sampler.cancel()

    t0 = time.monotonic()
    asyncio.run(main())
    took = time.monotonic() - t0
    stored = [f["feedback_id"] for _, f in rdb.xrange(Keys(srv.prefix).events) if f.get("feedback_id")]
    print(f"\nsoak: {CLIENTS} clients, {took:.0f} s: {tally['replies']} replies, feedback sent {tally['sent']} / "
          f"acked {tally['acked']} / stored {len(stored)}; errors {dict(errors)}; server RSS {start_rss:.0f} MB "
          f"after warm-up, peak {peak[0]:.0f} MB (bound +{RSS_GROWTH_MB} MB)")
    assert set(errors) <= {"busy"}, errors
    assert tally["replies"] >= CLIENTS                   # every client was served, more than once on average
    assert tally["sent"] == tally["acked"] == len(stored) and sorted(stored) == sorted(fids)
    assert peak[0] - start_rss <= RSS_GROWTH_MB
    assert srv.proc.poll() is None
