"""Batched decode: a row of a batched step computes what its sequence alone computes, and
concurrent streams through the engine give the same tokens as one at a time."""
from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from learner.modeling import load_model
from service.batching import batchable, decode_step
from service.engine import Engine, GenerationRequest, TokenEvent, cache_argument_name
from service.sampling import SamplingParams


@pytest.fixture(scope="module")
def tiny(models_dir):
    return load_model("tiny-random", models_dir, "cpu")


def _prefill(model, arg, ids):
    out = model(input_ids=torch.tensor([ids]), use_cache=True, **{arg: None})
    return getattr(out, arg), int(out.logits[0, -1].argmax())


@torch.no_grad()   # not set_grad_enabled(False): that would leak into later tests that train
def test_a_batched_step_equals_each_sequence_alone(tiny):
    model, arg = tiny.model, cache_argument_name(tiny.model)
    prompts = [[5, 6, 7], [11, 12, 13, 14, 15, 16, 17, 18], [21, 22, 23, 24, 25]]   # different lengths
    alone, batched = [], []
    for p in prompts:
        cache, tok = _prefill(model, arg, p)
        batched.append((cache, tok))
        cache2, _ = _prefill(model, arg, p)
        out = model(input_ids=torch.tensor([[tok]]), use_cache=True, **{arg: cache2})
        alone.append((out.logits[0, -1], getattr(out, arg)))
    caches = [c for c, _ in batched]
    assert batchable(caches)
    logits = decode_step(model, arg, caches, [t for _, t in batched], torch.device("cpu"))
    for row, (ref_logits, ref_cache), cache, p in zip(logits, alone, caches, prompts):
        assert torch.allclose(row, ref_logits, atol=1e-4), "batched logits differ from the sequence alone"
        assert cache.get_seq_length() == len(p) + 1
        for got, want in zip(cache.layers, ref_cache.layers):
            assert torch.allclose(got.keys, want.keys, atol=1e-5) and torch.allclose(got.values, want.values,
                                                                                        atol=1e-5)
    # a second step on the grown caches still matches (padding never leaks into a row)
    nxt = [int(r.argmax()) for r in logits]
    again = decode_step(model, arg, caches, nxt, torch.device("cpu"))
    for row, (ref_logits, ref_cache), tok in zip(again, alone, nxt):
        out = model(input_ids=torch.tensor([[tok]]), use_cache=True, **{arg: ref_cache})
        assert torch.allclose(row, out.logits[0, -1], atol=1e-4)


def _generate(engine, loop, requests):
    async def one(req):
        toks, lps = [], []
        async for ev in engine.submit(req, loop):
            if isinstance(ev, TokenEvent):
                toks.append(ev.token_id)
                lps.append(ev.logprob)
        return toks, lps

    async def all_at_once():
        return await asyncio.gather(*[one(r) for r in requests])
    return asyncio.run_coroutine_threadsafe(all_at_once(), loop).result(120)


def test_concurrent_streams_are_batched_and_give_the_tokens_they_give_alone(tiny):
    engine = Engine(tiny.model, tiny.tokenizer, torch.device("cpu"), stop_token_ids={-1})
    engine.start()
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    try:
        reqs = [GenerationRequest(list(range(3, 3 + n)), SamplingParams(temperature=0.0, top_p=1.0,
                                                                        max_new_tokens=12 + n, seed=n))
                for n in (4, 9, 2, 6)]
        alone = [_generate(engine, loop, [r])[0] for r in reqs]
        assert engine.batched_rows == 0
        together = _generate(engine, loop, reqs)
        assert engine.batched_rows > 0, "concurrent streams were not batched"
        for (a_toks, a_lps), (t_toks, t_lps) in zip(alone, together):
            assert t_toks == a_toks
            assert max(abs(x - y) for x, y in zip(a_lps, t_lps)) < 1e-3
    finally:
        engine.shutdown()
        loop.call_soon_threadsafe(loop.stop)


def test_a_prompt_prefilled_in_chunks_gives_the_same_reply(tiny):
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    replies = []
    try:
        for chunk in (256, 3):
            engine = Engine(tiny.model, tiny.tokenizer, torch.device("cpu"), stop_token_ids={-1}, prefill_chunk=chunk)
            engine.start()
            try:
                req = GenerationRequest(list(range(3, 14)), SamplingParams(temperature=0.0, max_new_tokens=10, seed=1))
                replies.append(_generate(engine, loop, [req])[0])
            finally:
                engine.shutdown()
    finally:
        loop.call_soon_threadsafe(loop.stop)
    (whole_toks, whole_lps), (chunked_toks, chunked_lps) = replies
    assert chunked_toks == whole_toks and len(whole_toks) == 10
    assert max(abs(a - b) for a, b in zip(whole_lps, chunked_lps)) < 1e-4
