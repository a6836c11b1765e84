"""Hot-swap benchmark: 8 concurrent streaming sessions over two server processes while 20
adapter versions are published in a row. Reports publish -> live on every server (the
version loaded and routed; p50/p95/max), swap apply time (p50/p95), publish -> first
token on the new version (p95, across both servers), streams dropped or errored (must be 0),
and token throughput during the swaps over throughput without swaps (same run).

    python bench/hotswap.py [--model smollm2] [--versions 20] [--sessions 8] [--every 3]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

import redis
import websockets
from common import pct, table, write_json

from core.embedded_redis import EmbeddedRedis
from tests.support.processes import MODELS, ServerProc, base_env, free_port


def random_adapters(model_name: str, n: int, rank: int, out: Path) -> tuple[str, list[Path]]:
    """Save n LoRA adapters with small random weights (distinct outputs, realistic file
    sizes) before measuring, so publishing during the run costs only a copy and a commit."""
    import torch
    from peft import LoraConfig, get_peft_model

    from core.modeling import load_model
    lm = load_model(model_name, MODELS, "cpu")
    model = get_peft_model(lm.model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    folders = []
    for i in range(n):
        torch.manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.002)
        folders.append(out / f"a{i}")
        model.save_pretrained(str(folders[-1]))
    return lm.model_id, folders


class Stats:
    def __init__(self):
        self.tokens = 0
        self.errors = 0
        self.finished = 0
        self.first_token: dict[tuple[str, int], float] = {}  # (version, server port) -> time


async def session_loop(srv, user: str, stats: Stats, stop: asyncio.Event) -> None:
    async with websockets.connect(srv.ws_url, max_size=2 ** 22) as ws:
        await ws.send(json.dumps({"type": "hello", "token": srv.token(user)}))
        while json.loads(await ws.recv())["type"] != "ready":
            pass
        i = 0
        while not stop.is_set():
            await ws.send(json.dumps({"type": "user_message", "text": f"Tell me a fact number {i}",
                                      "client_msg_id": f"{user}-{i}"}))
            i += 1
            version = None
            while True:
                f = json.loads(await ws.recv())
                if f["type"] == "reply_start":
                    version = f["adapter_version"]
                elif f["type"] == "token":
                    stats.tokens += 1
                    stats.first_token.setdefault((version, srv.port), time.time())
                elif f["type"] == "reply_end":
                    if f["finish_reason"] not in ("stop", "length"):
                        stats.errors += 1
                    stats.finished += 1
                    break
                elif f["type"] == "error":
                    stats.errors += 1
                    break


async def drive(servers, sessions: int, seconds: float, stats: Stats) -> float:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(session_loop(servers[i % len(servers)], f"s{i}", stats, stop))
             for i in range(sessions)]
    await asyncio.sleep(seconds)
    stop.set()
    t0 = time.perf_counter()
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0


def _serves(srv, version: str) -> bool:
    """Serving `version`, with its slot pool built (building slots stalls decoding: not
    something the no-swap phase should measure)."""
    from tests.support.clients import http
    from tests.support.processes import ADMIN
    code, body = http("GET", srv.url + "/admin/adapters", token=ADMIN)
    st = body["server"] if code == 200 else {}
    return code == 200 and st["routing"]["stable"] == version and st.get("slots") == st.get("slot_pool")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2 (default) | tiny-random")
    ap.add_argument("--versions", type=int, default=20, help="adapter versions published in a row")
    ap.add_argument("--sessions", type=int, default=8, help="concurrent streaming sessions (over 2 servers)")
    ap.add_argument("--every", type=float, default=3.0, help="seconds between publishes")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank of the published adapters")
    ap.add_argument("--tokens", type=int, default=32, help="max new tokens per reply")
    args = ap.parse_args()
    from tests.support.models import publish_adapter
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as store:
        data = Path(tmp) / "shared"
        data.mkdir()
        env = base_env(store.url, "hs:", data, REWARDLOOP_MODEL=args.model, REWARDLOOP_MAX_NEW_TOKENS=args.tokens,
                       REWARDLOOP_TEMPERATURE=0.7, REWARDLOOP_FEEDBACK_BURST=1000)
        # two servers on this machine: one intra-op thread each, or they fight over the cores
        servers = [ServerProc(env, free_port(), Path(tmp) / f"s{i}.log", prefix="hs:").start(600) for i in range(2)]
        try:
            model_id, folders = random_adapters(args.model, args.versions + 1, args.rank, Path(tmp))
            # Serve an adapter during the no-swap phase too: LoRA layers cost compute of their own,
            # and the ratio should show what swapping costs, not what LoRA costs.
            first = publish_adapter(store.url, "hs:", data, folders.pop(0), model_id, mode="stable")
            for s in servers:
                deadline = time.time() + 120
                while time.time() < deadline and not _serves(s, first):
                    time.sleep(0.2)
            # Both phases start fresh conversations and last as long: histories grow during a
            # phase, and longer histories mean more prefill per reply, so a shorter no-swap phase
            # would flatter it.
            phase_secs = args.versions * args.every + 2
            base_stats = Stats()
            # tokens of replies finishing after the stop count too: so does the time they take
            base_secs = phase_secs + asyncio.run(drive(servers, args.sessions, phase_secs, base_stats))  # no swaps

            swap_stats = Stats()
            published: dict[str, float] = {}
            committed: dict[str, float] = {}

            def publisher():
                for folder in folders:
                    t = time.time()
                    v = publish_adapter(store.url, "hs:", data, folder, model_id, mode="stable")
                    published[v] = t
                    committed[v] = time.time()   # registry commit done, notice sent
                    time.sleep(max(0.0, args.every - (time.time() - t)))

            th = threading.Thread(target=publisher)
            th.start()
            t0 = time.time()
            asyncio.run(drive(servers, args.sessions, phase_secs, swap_stats))
            th.join()
            swap_secs = time.time() - t0
            r = redis.Redis.from_url(store.url, decode_responses=True)
            swaps = [f for _, f in r.xrange("hs:adapters:swaps")]
        finally:
            for s in servers:
                s.stop()
    print("versions seen:", sorted({v for v, _ in swap_stats.first_token}), "published:", sorted(published))
    loaded = [f for f in swaps if f["result"] == "loaded"]
    apply_ms = [float(f["seconds"]) * 1000 for f in loaded]
    part = {k: [float(f[k]) * 1000 for f in loaded if k in f] for k in ("validate_s", "engine_wait_s", "load_s")}
    to_first = [(swap_stats.first_token[(v, s.port)] - t) * 1000 for v, t in published.items() for s in servers
                if (v, s.port) in swap_stats.first_token]
    # the title's figure: registry commit -> the version is loaded and routed on every server
    live_at: dict[str, list[float]] = {}
    for f in loaded:
        live_at.setdefault(f["version"], []).append(float(f["at"]))
    to_everywhere = [(max(live_at[v]) - t) * 1000 for v, t in committed.items() if len(live_at.get(v, [])) == 2]
    base_rate = base_stats.tokens / base_secs
    swap_rate = swap_stats.tokens / swap_secs
    rows = [
        {"figure": "publish -> live on every server, p50 ms", "value": pct(to_everywhere, 0.5)},
        {"figure": "publish -> live on every server, p95 ms", "value": pct(to_everywhere, 0.95)},
        {"figure": "publish -> live on every server, max ms", "value": max(to_everywhere, default=None)},
        {"figure": "swap apply (validate + load), p50 ms", "value": pct(apply_ms, 0.5)},
        {"figure": "swap apply, p95 ms", "value": pct(apply_ms, 0.95)},
        {"figure": "  of which validate (sha256, finite), p50 ms", "value": pct(part["validate_s"], 0.5)},
        {"figure": "  of which waiting for a decode step, p50 ms", "value": pct(part["engine_wait_s"], 0.5)},
        {"figure": "  of which load on the engine thread, p50 ms", "value": pct(part["load_s"], 0.5)},
        {"figure": "publish -> first token on new version, p50 ms", "value": pct(to_first, 0.5)},
        {"figure": "publish -> first token on new version, p95 ms", "value": pct(to_first, 0.95)},
        {"figure": "versions seen serving / expected", "value": f"{len(to_first)}/{2 * len(published)}"},
        {"figure": "streams dropped or errored", "value": swap_stats.errors + base_stats.errors},
        {"figure": "tokens/s without swaps (one adapter served)", "value": base_rate},
        {"figure": "tokens/s during swaps", "value": swap_rate},
        {"figure": "throughput ratio swaps / no swaps", "value": swap_rate / base_rate if base_rate else None},
    ]
    print(f"\nhot-swap benchmark: model={args.model}, {args.sessions} sessions on 2 servers, "
          f"{len(published)} versions every {args.every}s")
    print(table(rows, ["figure", "value"]))
    path = write_json("hotswap", {"args": vars(args), "rows": rows, "apply_ms": apply_ms,
                                  "publish_to_first_token_ms": to_first,
                                  "publish_to_everywhere_ms": to_everywhere, "swaps": loaded})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
