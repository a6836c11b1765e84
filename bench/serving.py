"""Serving benchmark.

Default (--only sessions): 1, 4 and 16 concurrent sessions side by side in one process, each
session count back to back: rewardloop over the websocket, serialized `model.generate`, static
batched `model.generate` (min_new_tokens = max_new_tokens: the practical ceiling) and
transformers' `generate_batch`; total tokens/s and ratios -> bench/results/serving.json.
--only latency: TTFT and decode rate over the websocket against `model.generate`, and batched
decode steps against one forward pass per stream (short and ~1k-token prompts).
--only turns: TTFT of turns 1..8 of one growing session with and without the prefix cache.
--only burst: N sessions connect and ask at once (admission control).
--engine vllm: rewardloop over vLLM against vLLM alone, publish -> live, the bf16/fp32 log-prob
gap (bench/serving_vllm.py; its flags follow, see `--engine vllm --help`).

    python bench/serving.py [--model smollm2] [--tokens 64] [--sessions 1,4,16] [--device cpu]
                            [--only sessions|latency|turns|burst]
    python bench/serving.py --engine vllm [--sessions 16] [--tokens 64] [--vllm-servers 1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

from common import live_server, mean, table, write_json

PROMPT = "Explain in a few sentences why the sky is blue."
FILLER = ("Sunlight is made of many colours. Air molecules scatter short wavelengths more than long ones, "
          "so blue light is scattered across the whole sky and reaches our eyes from every direction. ")


def long_prompt(tokenizer, n_tokens: int) -> str:
    """A question after ~n_tokens of context, as a chat user would paste it."""
    per = len(tokenizer(FILLER, add_special_tokens=False)["input_ids"])
    text = FILLER * max(1, n_tokens // per)
    return text + "\n\nGiven the text above, " + PROMPT[0].lower() + PROMPT[1:]


def over_websocket(srv, runs: int) -> list[dict]:
    from tests.support.clients import Chat
    out = []
    for i in range(runs):
        chat = Chat(srv, srv.token(f"bench{i}"))   # a fresh session each run: same prompt length
        t0 = time.perf_counter()
        chat.send({"type": "user_message", "text": PROMPT, "client_msg_id": f"b{i}"})
        chat.recv_type("reply_start")
        first = None
        while True:
            f = chat.recv()
            if f["type"] == "token" and first is None:
                first = time.perf_counter()
            if f["type"] == "reply_end":
                end, n = time.perf_counter(), f["n_tokens"]
                break
        chat.close()
        out.append({"ttft_s": first - t0, "tokens": n, "decode_tok_s": (n - 1) / (end - first)})
    return out


async def concurrent_streams(srv, streams: int, prompt: str = PROMPT) -> dict:
    """`streams` sessions ask at once; total streamed tokens / wall time, and mean TTFT."""
    import asyncio

    import websockets

    async def one(i):
        async with websockets.connect(srv.ws_url, max_size=2 ** 22) as ws:
            await ws.send(json.dumps({"type": "hello", "token": srv.token(f"c{i}")}))
            while json.loads(await ws.recv())["type"] != "ready":
                pass
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "user_message", "text": prompt, "client_msg_id": f"c{i}"}))
            first = None
            while True:
                f = json.loads(await ws.recv())
                if f["type"] == "token" and first is None:
                    first = time.perf_counter() - t0
                if f["type"] == "reply_end":
                    return f["n_tokens"], first

    t0 = time.perf_counter()
    done = await asyncio.gather(*[one(i) for i in range(streams)])
    wall = time.perf_counter() - t0
    return {"tok_s": sum(n for n, _ in done) / wall, "ttft_ms": mean([f for _, f in done]) * 1000,
            "wall_s": wall, "tokens": mean([n for n, _ in done])}


def multi_turn(srv, turns: int, text: str) -> list[float]:
    """Time to first token of turns 1..N of one growing session (each turn adds `text`)."""
    from tests.support.clients import Chat
    chat = Chat(srv, srv.token("multiturn"))
    out = []
    for i in range(turns):
        t0 = time.perf_counter()
        chat.send({"type": "user_message", "text": text, "client_msg_id": f"t{i}"})
        while chat.recv()["type"] != "token":
            pass
        out.append(time.perf_counter() - t0)
        while chat.recv()["type"] != "reply_end":
            pass
    chat.close()
    return out


async def burst(srv, n: int) -> dict:
    """n sessions connect and ask at once: every one must be answered (a reply or `busy`), busy
    ones fast. Times: connect -> ready, and user_message -> the answer (reply_end or busy)."""
    import collections

    import websockets

    async def one(i):
        t_open = time.perf_counter()
        async with websockets.connect(srv.ws_url, max_size=2 ** 22, open_timeout=60) as ws:
            await ws.send(json.dumps({"type": "hello", "token": srv.token(f"burst{i}")}))
            while (f := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] != "ready":
                if f["type"] == "error":   # refused at hello (e.g. storage unavailable): an answer too
                    return f"hello {f['code']}", None, time.perf_counter() - t_open
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "user_message", "text": PROMPT, "client_msg_id": f"b{i}"}))
            while True:
                f = json.loads(await asyncio.wait_for(ws.recv(), 600))
                if f["type"] == "reply_end" or (f["type"] == "error" and f["code"] != "generation_failed"):
                    return f.get("code") or "answered", time.perf_counter() - t0, t0 - t_open
    done = await asyncio.gather(*[one(i) for i in range(n)], return_exceptions=True)
    kinds = [d[0] if isinstance(d, tuple) else f"failed: {type(d).__name__}: {d}"[:200] for d in done]
    busy = [d[1] for d in done if isinstance(d, tuple) and d[0] == "busy"]
    answered = [d[1] for d in done if isinstance(d, tuple) and d[0] == "answered"]
    ready = [d[2] for d in done if isinstance(d, tuple)]
    return {"requests": n, "answered": len(answered), "busy": len(busy), "other": n - len(answered) - len(busy),
            "kinds": dict(collections.Counter(kinds)), "ready_max_s": max(ready) if ready else None,
            "busy_max_s": max(busy) if busy else None, "answered_max_s": max(answered) if answered else None}


def plain_generate(model: str, models_dir, device: str, tokens: int, runs: int, system: str) -> list[dict]:
    import torch

    from core.modeling import load_model
    lm = load_model(model, models_dir, device)
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": PROMPT}]
    text = lm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(lm.device)
    out = []
    with torch.no_grad():
        for _ in range(runs):
            t0 = time.perf_counter()
            lm.model.generate(ids, max_new_tokens=1, do_sample=False)
            ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            gen = lm.model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            total = time.perf_counter() - t0
            n = gen.shape[1] - ids.shape[1]
            out.append({"ttft_s": ttft, "tokens": n, "decode_tok_s": (n - 1) / max(total - ttft, 1e-9)})
    return out


def chat_ids(lm, system: str, prompt: str = PROMPT) -> list[int]:
    """The prompt's token ids as the server builds them (system prompt + chat template)."""
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    text = lm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def serialized_generate(lm, ids: list[int], n: int, tokens: int) -> dict:
    """n requests one after another, one `model.generate` each (every token greedy, no early stop)."""
    import torch
    x = torch.tensor([ids], device=lm.device)
    t0, total = time.perf_counter(), 0
    with torch.no_grad():
        for _ in range(n):
            out = lm.model.generate(x, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            total += out.shape[1] - x.shape[1]
    wall = time.perf_counter() - t0
    return {"tok_s": total / wall, "wall_s": wall, "tokens": total / n}


def static_batched_generate(lm, ids: list[int], n: int, tokens: int) -> dict:
    """All n requests in one `model.generate` call, every row decoding exactly `tokens` (min = max):
    no row leaves early and none joins late, the practical ceiling of batched decoding here."""
    import torch
    x = torch.tensor([ids] * n, device=lm.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=tokens,
                                min_new_tokens=tokens, do_sample=False)
    wall = time.perf_counter() - t0
    return {"tok_s": n * (out.shape[1] - x.shape[1]) / wall, "wall_s": wall, "tokens": out.shape[1] - x.shape[1]}


def transformers_generate_batch(lm, ids: list[int], n: int, tokens: int) -> dict:
    """transformers' continuous-batching `generate_batch` on the same n prompts (greedy)."""
    import torch
    from transformers import ContinuousBatchingConfig, GenerationConfig
    cfg = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    # Its KV cache sized for these requests: by default it takes a share of free memory, which on a
    # CPU box is most of it (13 GB here; the OOM killer ended the bench).
    page = 256
    cb = ContinuousBatchingConfig(page_size=page, num_blocks=n * (-(-(len(ids) + tokens) // page)) + 4,
                                  max_batch_tokens=1024)
    t0 = time.perf_counter()
    with torch.no_grad():
        outs = lm.model.generate_batch([list(ids) for _ in range(n)], generation_config=cfg,
                                       continuous_batching_config=cb, progress_bar=False)
    wall = time.perf_counter() - t0
    total = sum(len(o.generated_tokens) for o in outs.values())
    errors = [o.error for o in outs.values() if o.error]
    if errors:
        raise RuntimeError(errors[0])
    return {"tok_s": total / wall, "wall_s": wall, "tokens": total / max(1, len(outs))}


def sessions_run(args) -> None:
    """1, 4, 16 sessions side by side, in one process and back to back per session count:
    rewardloop over the websocket, serialized model.generate, static batched model.generate
    and transformers' generate_batch. Total generated tokens / wall time of each."""
    import torch

    from core.modeling import load_model
    from core.settings import Settings
    from tests.support.processes import MODELS
    counts = [int(c) for c in args.sessions.split(",")]
    system = Settings().system_prompt
    results: dict = {}
    # The same intra-op threads on both sides: with 2 threads on busy cores a thread that is
    # descheduled stalls every op at its barrier (model.generate ran ~10x slower than the server).
    torch.set_num_threads(args.threads)
    with live_server(args.model, REWARDLOOP_TEMPERATURE=0, REWARDLOOP_MAX_NEW_TOKENS=args.tokens,
                     REWARDLOOP_DEVICE=args.device, REWARDLOOP_MAX_BATCH=max(counts),
                     OMP_NUM_THREADS=args.threads) as (srv, _):
        lm = load_model(args.model, MODELS, args.device)
        ids = chat_ids(lm, system)
        asyncio.run(concurrent_streams(srv, 2))                 # warm-up: both sides
        static_batched_generate(lm, ids, 2, 4)
        for n in counts:   # the server idles while this process generates: one thing runs at a time
            r = results[n] = {"rewardloop (websocket)": asyncio.run(concurrent_streams(srv, n))}
            # Serialized: each request is alone, so its rate does not depend on n; at most 4 are timed.
            r["serialized model.generate"] = serialized_generate(lm, ids, min(n, 4), args.tokens)
            r["static batched model.generate"] = static_batched_generate(lm, ids, n, args.tokens)
            try:
                r["transformers generate_batch"] = transformers_generate_batch(lm, ids, n, args.tokens)
            except Exception as exc:   # reported, not hidden: the other paths still compare
                r["transformers generate_batch"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    rows = []
    for n, r in results.items():
        ws, serial, static = (r[k]["tok_s"] for k in ("rewardloop (websocket)", "serialized model.generate",
                                                        "static batched model.generate"))
        gb = r["transformers generate_batch"].get("tok_s")
        rows.append({"sessions": n, "rewardloop_tok_s": ws, "serialized_tok_s": serial, "static_tok_s": static,
                     "generate_batch_tok_s": gb, "rl/static": ws / static, "rl/serialized": ws / serial,
                     "rl/generate_batch": ws / gb if gb else None, "rl_ttft_ms": r["rewardloop (websocket)"]["ttft_ms"],
                     "rl_tokens": r["rewardloop (websocket)"].get("tokens")})
    print(f"\nsessions side by side: model={args.model} device={args.device} tokens={args.tokens} (greedy), "
          f"threads={args.threads}; total generated tokens/s")
    print(table(rows, ["sessions", "rewardloop_tok_s", "serialized_tok_s", "static_tok_s", "generate_batch_tok_s",
                       "rl/static", "rl/serialized", "rl/generate_batch", "rl_ttft_ms"]))
    for n, r in results.items():
        if "error" in r["transformers generate_batch"]:
            print(f"generate_batch at {n}: {r['transformers generate_batch']['error']}")
    print(f"\nwrote {write_json('serving', {'args': vars(args), 'rows': rows, 'runs': results})}")


def main() -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--engine", choices=["local", "vllm"], default="local")
    engine, rest = pre.parse_known_args()
    if engine.engine == "vllm":   # the same sessions over vLLM: a run of its own, with its own flags
        import serving_vllm
        return serving_vllm.main(rest)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["local", "vllm"], default="local",
                    help="local: the built-in engine (this run); vllm: bench/serving_vllm.py's run")
    ap.add_argument("--model", default="smollm2", help="smollm2 (default) | tiny-random | a model folder")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per reply")
    ap.add_argument("--runs", type=int, default=3, help="repetitions of each measurement")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--streams", type=int, default=8, help="concurrent streams for the batching comparison")
    ap.add_argument("--context", type=int, default=1000, help="prompt tokens of the long-prompt comparison")
    ap.add_argument("--only", choices=["sessions", "latency", "turns", "burst"], default="sessions",
                    help="sessions: 1/4/16 sessions against serialized, static batched generate and generate_batch; "
                         "latency: TTFT and decode rate against model.generate, batched vs one forward per stream; "
                         "turns: TTFT of turns 1..8 with/without the prefix cache; burst: 300 requests at once")
    ap.add_argument("--sessions", default="1,4,16", help="session counts of the sessions run")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the server and of this process's generate runs (sessions run)")
    ap.add_argument("--turns", type=int, default=8, help="turns of the multi-turn run")
    ap.add_argument("--turn-fillers", type=int, default=4,
                    help="filler paragraphs (~37 tokens each) in each turn of the multi-turn run")
    ap.add_argument("--burst", type=int, default=300, help="requests of the burst run")
    args = ap.parse_args()
    if args.only == "sessions":
        return sessions_run(args)
    if args.only != "latency":
        return extra_runs(args)
    from core.settings import Settings
    from tests.support.processes import MODELS
    system = Settings().system_prompt
    from transformers import AutoTokenizer

    from core.modeling import resolve_model_path
    long = long_prompt(AutoTokenizer.from_pretrained(resolve_model_path(args.model, MODELS)[0]), args.context)
    big = {"REWARDLOOP_MAX_MESSAGE_BYTES": max(8192, 2 * len(long.encode()))}
    # Greedy with a stop-free budget so both sides decode the same number of tokens.
    with live_server(args.model, REWARDLOOP_TEMPERATURE=0, REWARDLOOP_MAX_NEW_TOKENS=args.tokens,
                     REWARDLOOP_DEVICE=args.device, **big) as (srv, _):
        over_websocket(srv, 1)                      # warm-up
        ws = over_websocket(srv, args.runs)
        batched = asyncio.run(concurrent_streams(srv, args.streams))
        batched_long = asyncio.run(concurrent_streams(srv, args.streams, long))
    with live_server(args.model, REWARDLOOP_TEMPERATURE=0, REWARDLOOP_MAX_NEW_TOKENS=args.tokens,
                     REWARDLOOP_DEVICE=args.device, REWARDLOOP_MAX_BATCH=1, **big) as (srv, _):
        over_websocket(srv, 1)                      # warm-up
        one_by_one = asyncio.run(concurrent_streams(srv, args.streams))
        one_by_one_long = asyncio.run(concurrent_streams(srv, args.streams, long))
    direct = plain_generate(args.model, MODELS, args.device, args.tokens, args.runs, system)
    rows = []
    for name, runs in (("websocket (rewardloop)", ws), ("model.generate", direct)):
        rows.append({"path": name, "ttft_ms": mean([r["ttft_s"] for r in runs]) * 1000,
                     "decode_tok_s": mean([r["decode_tok_s"] for r in runs]),
                     "tokens": mean([r["tokens"] for r in runs])})
    rows.append({"path": "ratio ws/generate", "ttft_ms": rows[0]["ttft_ms"] / rows[1]["ttft_ms"],
                 "decode_tok_s": rows[0]["decode_tok_s"] / rows[1]["decode_tok_s"]})
    print(f"\nserving benchmark: model={args.model} device={args.device} tokens={args.tokens} runs={args.runs}")
    print(table(rows, ["path", "ttft_ms", "decode_tok_s", "tokens"]))
    conc = []
    for prompt, b, o in (("short", batched, one_by_one), (f"~{args.context} tokens", batched_long, one_by_one_long)):
        conc += [{"prompt": prompt, "engine": "batched decode steps", **b},
                 {"prompt": prompt, "engine": "one forward per stream", **o},
                 {"prompt": prompt, "engine": "ratio batched / one by one", "tok_s": b["tok_s"] / o["tok_s"],
                  "ttft_ms": b["ttft_ms"] / o["ttft_ms"]}]
    print(f"\n{args.streams} concurrent streams, total tokens/s and mean time to first token")
    print(table(conc, ["prompt", "engine", "tok_s", "ttft_ms", "wall_s"]))
    path = write_json("serving_latency", {"args": vars(args), "rows": rows, "websocket_runs": ws, "generate_runs": direct,
                                  "concurrent": conc})
    print(f"\nwrote {path}")



def extra_runs(args) -> None:
    """The multi-turn (prefix cache) and burst (admission control) runs."""
    env = dict(REWARDLOOP_TEMPERATURE=0, REWARDLOOP_MAX_NEW_TOKENS=args.tokens, REWARDLOOP_DEVICE=args.device,
               REWARDLOOP_MAX_MESSAGE_BYTES=65536, REWARDLOOP_CONTEXT_BUDGET=8192)
    out: dict = {"args": vars(args)}
    if args.only == "turns":
        turn_text = FILLER * args.turn_fillers + "What else?"   # 4: ~155 tokens a turn + the reply: ~1.4k at turn 8
        rows = {}
        for mb in (512, 0):
            with live_server(args.model, REWARDLOOP_PREFIX_CACHE_MB=mb, **env) as (srv, _):
                multi_turn(srv, 1, "warm up")
                rows[mb] = multi_turn(srv, args.turns, turn_text)
        table_rows = [{"turn": i + 1, "ttft_ms_cache": rows[512][i] * 1000, "ttft_ms_no_cache": rows[0][i] * 1000,
                       "ratio": rows[512][i] / rows[0][i]} for i in range(args.turns)]
        print(f"\nmulti-turn: TTFT of one growing session, model={args.model} device={args.device}")
        print(table(table_rows, ["turn", "ttft_ms_cache", "ttft_ms_no_cache", "ratio"]))
        print(f"turn {args.turns} / turn 1 with the cache: {rows[512][-1] / rows[512][0]:.2f}x; "
              f"without: {rows[0][-1] / rows[0][0]:.2f}x")
        out["multi_turn"] = table_rows
    else:
        with live_server(args.model, REWARDLOOP_MAX_QUEUE=64, **env) as (srv, _):
            res = asyncio.run(burst(srv, args.burst))
        print(f"\nburst of {args.burst} requests (REWARDLOOP_MAX_QUEUE=64), model={args.model}")
        print(table([res], ["requests", "answered", "busy", "other", "ready_max_s", "busy_max_s", "answered_max_s"]))
        out["burst"] = res
    print(f"\nwrote {write_json('serving_' + args.only, out)}")


if __name__ == "__main__":
    main()
