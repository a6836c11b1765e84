"""The limits of a scaled-out deployment, measured: Redis memory per reply (through a real
server, the real reward pipeline, with feedback; extrapolated to 1M replies) and the adapter
file size per LoRA rank (PEFT's own files, all linear layers of the default model).

Redis: a fresh embedded Redis, a tiny-model server (its replies always run to
--tokens, so the token ids and log-probs stored per reply are what a real model's reply of that
length stores), --replies chats in sessions of 5 turns, a thumbs on each, the rewards made
final; used_memory before and after, divided by the replies.

    .venv/bin/python bench/scale_limits.py            # table, bench/results/scale_limits.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from bench.common import RESULTS  # noqa: E402
from core.embedded_redis import EmbeddedRedis  # noqa: E402
from tests.support.clients import Chat  # noqa: E402
from tests.support.processes import MODELS, ServerProc, base_env, free_port  # noqa: E402


def redis_per_reply(tokens: int, replies: int) -> dict:
    from tests.service.dev_support import finalize_rewards
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        srv = ServerProc(base_env(server.url, "rl:", Path(tmp), REWARDLOOP_MAX_NEW_TOKENS=tokens), free_port(),
                         Path(tmp) / "server.log").start(timeout=300)
        try:
            chat = Chat(srv, srv.token("warm"))
            chat.ask("warm up")
            chat.close()
            r.execute_command("MEMORY", "PURGE")
            before = int(r.info("memory")["used_memory"])
            n_tokens = []
            for s in range(replies // 5):
                chat = Chat(srv, srv.token(f"user{s % 50}"))
                for turn in range(5):
                    out = chat.ask(f"question {turn} of session {s}: what should I cook tonight?")
                    n_tokens.append(out["end"]["n_tokens"])
                    assert chat.feedback(out["start"]["reply_id"], "thumbs", 1)["type"] == "ack"
                chat.close()
            finalize_rewards(server.url, "rl:")
            r.execute_command("MEMORY", "PURGE")
            after = int(r.info("memory")["used_memory"])
            finals = r.xlen("rl:rewards")
            by_kind: dict[str, int] = {}
            for key in r.scan_iter("rl:*", count=1000):   # which records hold the bytes
                kind = key[3:].split(":", 1)[0]
                by_kind[kind] = by_kind.get(kind, 0) + int(r.memory_usage(key, samples=0) or 0)
        finally:
            srv.stop()
            r.close()
    n = len(n_tokens)
    return {"tokens_per_reply": round(sum(n_tokens) / n, 1), "replies": n, "final_rewards": finals,
            "bytes_per_reply": round((after - before) / n), "gb_per_million_replies": round((after - before) / n * 1e6 / 1e9, 2),
            "bytes_per_reply_by_key": {k: round(v / n) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])}}


def adapter_sizes(ranks: list[int]) -> list[dict]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from core.modeling import resolve_model_path
    path, model_id = resolve_model_path("smollm2", MODELS)
    config = AutoConfig.from_pretrained(path)
    rows = []
    for r in ranks:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(config)   # random weights: only the shapes matter here
        model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        rows.append({"model": model_id, "rank": r, "lora_params": params, "file_mb_float32": round(size / 1e6, 2),
                     "bf16_mb": round(params * 2 / 1e6, 2)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replies", type=int, default=100, help="replies per measurement (default 100)")
    ap.add_argument("--tokens", default="32,128", help="reply lengths in tokens (default 32,128)")
    ap.add_argument("--ranks", default="4,8,16,32,64", help="LoRA ranks (default 4,8,16,32,64)")
    ap.add_argument("--out", type=Path, default=RESULTS / "scale_limits.json")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    mem = [redis_per_reply(int(t), args.replies) for t in args.tokens.split(",")]
    if len(mem) >= 2:  # a linear fit: fixed bytes per reply + bytes per generated token
        a, b = mem[0], mem[-1]
        per_token = (b["bytes_per_reply"] - a["bytes_per_reply"]) / (b["tokens_per_reply"] - a["tokens_per_reply"])
        fixed = a["bytes_per_reply"] - per_token * a["tokens_per_reply"]
    else:
        per_token = fixed = None
    sizes = adapter_sizes([int(r) for r in args.ranks.split(",")])
    print(f"{'tokens/reply':>12} {'replies':>8} {'bytes/reply':>12} {'GB per 1M replies':>18}")
    for m in mem:
        print(f"{m['tokens_per_reply']:>12} {m['replies']:>8} {m['bytes_per_reply']:>12} {m['gb_per_million_replies']:>18}"
              f"   by key: {', '.join(f'{k} {v}' for k, v in list(m['bytes_per_reply_by_key'].items())[:6])}")
    if per_token is not None:
        print(f"fit: {fixed:.0f} bytes + {per_token:.1f} bytes per generated token, per reply")
    print(f"\n{'rank':>5} {'LoRA params':>12} {'file MB (fp32)':>15} {'bf16 MB':>8}   ({sizes[0]['model']}, all linear layers)")
    for s in sizes:
        print(f"{s['rank']:>5} {s['lora_params']:>12} {s['file_mb_float32']:>15} {s['bf16_mb']:>8}")
    out = {"redis": mem, "redis_fit": {"fixed_bytes": fixed, "bytes_per_token": per_token}, "adapters": sizes,
           "seconds": round(time.time() - t0, 1), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
