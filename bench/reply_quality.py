"""What scoring each reply's relevance and fluency on the engine thread costs serving.

Two real servers on the same model, side by side in one run (each on its own embedded Redis),
both scoring P[unsafe] (REWARDLOOP_REPLY_SAFETY=1, the default): one with
REWARDLOOP_REPLY_QUALITY=0, one with =1 (the default: after each reply, a batched base-model
pass over prompts and replies on the engine thread once no stream is in flight, or 5 s later at
most). Rounds alternate between them (off, on, off, on, ...) so the box's noise falls on both;
after an "on" round the bench waits until its replies are scored, so the next round does not
share the CPU with that scoring. Each round, `--streams` sessions ask at once. Reports total
tokens/s, TTFT, the end lag (last token to reply_end: what a user would wait for the scores),
with on/off ratios, and the engine milliseconds per scored reply from /readyz (the CPU it costs,
spent while no one streams).

    flock /tmp/rl-heavy.lock .venv/bin/python bench/reply_quality.py [--model smollm2] [--streams 4]
                                                                     [--rounds 4] [--tokens 128]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from contextlib import ExitStack

from common import live_server, mean, pct, table, write_json

from tests.support.clients import http
from tests.support.waiting import wait_for

QUESTIONS = ["Explain in a few sentences why the sky is blue.", "What makes bread rise? Answer briefly.",
             "Why do we have seasons on Earth?", "How does a bicycle stay upright when it moves?"]


async def round_of(srv, streams: int, k: int) -> list[dict]:
    import websockets

    async def one(i):
        async with websockets.connect(srv.ws_url, max_size=2 ** 22) as ws:
            await ws.send(json.dumps({"type": "hello", "token": srv.token(f"q{k}_{i}")}))
            while json.loads(await ws.recv())["type"] != "ready":
                pass
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "user_message", "text": QUESTIONS[(i + k) % len(QUESTIONS)],
                                      "client_msg_id": f"q{k}_{i}"}))
            first = last = None
            while True:
                f = json.loads(await ws.recv())
                if f["type"] == "token":
                    last = time.perf_counter()
                    first = first or last
                if f["type"] == "reply_end":
                    end = time.perf_counter()
                    return {"tokens": f["n_tokens"], "ttft_s": (first or end) - t0, "end_lag_s": end - (last or end),
                            "started": t0, "ended": end}
    return await asyncio.gather(*[one(i) for i in range(streams)])


def _quality(srv) -> dict:
    return http("GET", srv.url + "/readyz")[1]["reply_quality"]


def summary(rows: list[dict], walls: list[float]) -> dict:
    return {"replies": len(rows), "tokens_per_s": sum(r["tokens"] for r in rows) / sum(walls),
            "ttft_p50_s": pct([r["ttft_s"] for r in rows], 0.5), "ttft_p95_s": pct([r["ttft_s"] for r in rows], 0.95),
            "end_lag_mean_s": mean([r["end_lag_s"] for r in rows]),
            "end_lag_p95_s": pct([r["end_lag_s"] for r in rows], 0.95)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--streams", type=int, default=4, help="sessions asking at once in a round")
    p.add_argument("--rounds", type=int, default=4, help="rounds per server (alternating)")
    p.add_argument("--tokens", type=int, default=128, help="REWARDLOOP_MAX_NEW_TOKENS")
    args = p.parse_args(argv)
    arms = {"off": "0", "on": "1"}
    with ExitStack() as stack:
        servers = {}
        for name, flag in arms.items():
            srv, _ = stack.enter_context(live_server(args.model, REWARDLOOP_REPLY_SAFETY=1, REWARDLOOP_REPLY_QUALITY=flag,
                                                     REWARDLOOP_MAX_NEW_TOKENS=args.tokens))
            servers[name] = srv
        t0 = time.time()
        wait_for(lambda: (http("GET", servers["on"].url + "/readyz")[1].get("reply_quality") or {}).get("calibrated"),
                 900, what="the relevance/fluency calibration", logs=[servers["on"]], every=1.0)
        calibration_s = time.time() - t0
        rows: dict[str, list] = {n: [] for n in arms}
        walls: dict[str, list] = {n: [] for n in arms}
        scored, drain = 0, []
        for k in range(args.rounds):
            for name in arms:
                got = asyncio.run(round_of(servers[name], args.streams, k))
                rows[name] += got
                walls[name].append(max(r["ended"] for r in got) - min(r["started"] for r in got))
                if name == "on":   # its scoring runs once the engine is idle: let it finish before the
                    t1 = time.time()   # other server's round, so that round does not share the CPU with it
                    scored += len(got)
                    wait_for(lambda: _quality(servers["on"])["replies"] >= scored, 120, what="the scoring",
                             logs=[servers["on"]], every=0.1)
                    drain.append(time.time() - t1)
                print(f"round {k + 1}/{args.rounds} {name}: {sum(r['tokens'] for r in got)} tokens in "
                      f"{walls[name][-1]:.1f} s", flush=True)
        scoring = dict(_quality(servers["on"]), drain_after_round_s=drain)
    figures = {n: summary(rows[n], walls[n]) for n in arms}
    ratio = {k: figures["on"][k] / figures["off"][k] if figures["off"][k] else None
             for k in ("tokens_per_s", "ttft_p50_s", "ttft_p95_s")}
    out = [{"relevance+fluency": n, **{k: round(v, 3) for k, v in f.items()}} for n, f in figures.items()]
    print(table(out, list(out[0])))
    print(f"on / off: tokens/s {ratio['tokens_per_s']:.2f}x, TTFT p50 {ratio['ttft_p50_s']:.2f}x, "
          f"p95 {ratio['ttft_p95_s']:.2f}x; engine {scoring['engine_ms_per_reply']:.0f} ms per scored reply "
          f"({scoring['replies']} replies, {scoring['calls']} calls; done {mean(drain):.1f} s after a round on average); "
          f"end lag {figures['on']['end_lag_mean_s'] * 1000:.0f} ms vs "
          f"{figures['off']['end_lag_mean_s'] * 1000:.0f} ms; calibration wait {calibration_s:.0f} s")
    path = write_json("reply_quality", {"args": vars(args), "figures": figures, "on_over_off": ratio,
                                        "engine_scoring": scoring, "calibration_wait_s": calibration_s})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
