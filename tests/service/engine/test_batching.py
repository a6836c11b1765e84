"""Batched decode: a row of a batched step computes what its sequence alone computes, and
concurrent streams through the engine give the same tokens as one at a time."""
from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from core.modeling import cache_argument_name, load_model
from core.sampling import SamplingParams
from service.engine.batching import DecodeBatch, batchable
from service.engine.core import Engine, GenerationRequest, TokenEvent


@pytest.fixture(scope="module")
def tiny(models_dir):
    return load_model("tiny-random", models_dir, "cpu")


def _prefill(model, arg, ids):
    out = model(input_ids=torch.tensor([ids]), use_cache=True, **{arg: None})
    return getattr(out, arg), int(out.logits[0, -1].argmax())


class _Alone:
    """Reference: one sequence decoded by itself with its own DynamicCache."""

    def __init__(self, model, arg, ids):
        self.model, self.arg = model, arg
        out = model(input_ids=torch.tensor([ids]), use_cache=True, **{arg: None})
        self.cache, self.logits = getattr(out, arg), out.logits[0, -1]

    def feed(self, tok):
        out = self.model(input_ids=torch.tensor([[tok]]), use_cache=True, **{self.arg: self.cache})
        self.cache, self.logits = getattr(out, self.arg), out.logits[0, -1]
        return self.logits


@torch.no_grad()   # not set_grad_enabled(False): that would leak into later tests that train
@pytest.mark.parametrize("max_rows", [32, 2])
def test_batched_steps_equal_each_sequence_alone_as_rows_join_and_leave(tiny, max_rows):
    model, arg = tiny.model, cache_argument_name(tiny.model)
    cpu = torch.device("cpu")
    prompts = [[5, 6, 7], [11, 12, 13, 14, 15, 16, 17, 18], [21, 22, 23, 24, 25], [31] * 300]  # 300: grows it
    alone = [_Alone(model, arg, p) for p in prompts]
    batch = DecodeBatch()
    for i, p in enumerate(prompts[:3]):
        cache, _ = _prefill(model, arg, p)
        assert batchable([cache])
        batch.add(i, cache)

    def step_and_check(members):
        feed = [(m, int(alone[m].logits.argmax())) for m in members]
        got = batch.step(model, arg, feed, max_rows, cpu)
        for (m, tok), logits in zip(feed, got):
            assert torch.allclose(logits, alone[m].feed(tok), atol=1e-4), f"row of sequence {m} differs from it alone"
        assert [batch.lengths[batch.members.index(m)] for m in members] == \
            [alone[m].cache.get_seq_length() for m in members]

    step_and_check([0, 1, 2])
    step_and_check([0, 1, 2])                  # padding never leaks into a row
    step_and_check([0, 2])                     # a row without a token this step keeps its length
    batch.remove(0)                            # the last row moves into the freed one
    assert batch.members == [2, 1]
    step_and_check([1, 2])
    cache, _ = _prefill(model, arg, prompts[3])
    batch.add(3, cache)                        # a longer sequence joins: the buffer grows
    for _ in range(3):
        step_and_check([1, 2, 3])
    assert batch._capacity()[1] == 512
    batch.remove(3)                            # the long row leaves: the buffers shrink, rows kept
    assert batch._capacity()[1] == 128
    step_and_check([1, 2])
    for m in (1, 2):
        batch.remove(m)
    assert len(batch) == 0 and batch._keys == []


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


def test_prompts_are_prefilled_first_come_first_served(tiny):
    """Two long prompts at once: the first streams tokens while the second is still being
    prefilled (round-robin prefill would start both only at the very end)."""
    engine = Engine(tiny.model, tiny.tokenizer, torch.device("cpu"), stop_token_ids={-1}, prefill_chunk=4)
    engine.start()
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    arrivals: list[str] = []

    async def one(name, req):
        async for ev in engine.submit(req, loop):
            if isinstance(ev, TokenEvent):
                arrivals.append(name)

    async def both():
        params = SamplingParams(temperature=0.0, max_new_tokens=30, seed=1)
        await asyncio.gather(one("a", GenerationRequest(list(range(3, 43)), params)),
                             one("b", GenerationRequest(list(range(5, 45)), params)))
    try:
        asyncio.run_coroutine_threadsafe(both(), loop).result(120)
    finally:
        engine.shutdown()
        loop.call_soon_threadsafe(loop.stop)
    assert arrivals.count("a") == arrivals.count("b") == 30
    # b's 40-token prompt takes 10 chunks after a's: a has streamed ~10 tokens by then
    assert arrivals.index("b") >= 8, arrivals[:12]


def test_rows_on_different_adapter_versions_share_a_forward_and_match_each_alone(tiny, models_dir, tmp_path):
    """Streams on v1, v2 and the base model at once: one forward per step (PEFT's
    mixed-adapter batch), and each stream gets the tokens it gets alone."""
    from core.modeling import load_model
    from service.engine.slots import AdapterSlots
    from tests.support.models import save_random_adapter
    model = load_model("tiny-random", models_dir, "cpu").model   # its own copy: slots wrap it in PEFT
    engine = Engine(model, tiny.tokenizer, torch.device("cpu"), stop_token_ids={-1})
    engine.adapters = AdapterSlots(engine)
    for v in ("1", "2"):
        engine.adapters.load(v, save_random_adapter(models_dir, tmp_path / v, seed=int(v)))
    engine.start()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        reqs = [GenerationRequest(list(range(3, 3 + n)), SamplingParams(temperature=0.0, max_new_tokens=10, seed=n),
                                  adapter=v) for n, v in ((4, "1"), (7, "2"), (5, None), (6, "1"))]
        alone = [_generate(engine, loop, [r])[0] for r in reqs]
        assert alone[0][0] != _generate(engine, loop, [GenerationRequest(reqs[0].prompt_ids, reqs[0].params,
                                                                          adapter="2")])[0][0]
        mixed_before = engine.mixed_forwards
        together = _generate(engine, loop, reqs)
        assert engine.mixed_forwards > mixed_before, "rows on several versions were not decoded together"
        for (a_toks, a_lps), (t_toks, t_lps) in zip(alone, together):
            assert t_toks == a_toks
            assert max(abs(x - y) for x, y in zip(a_lps, t_lps)) < 1e-3
        assert engine.refs == {"1": 0, "2": 0, "base": 0}
    finally:
        engine.shutdown()
        loop.call_soon_threadsafe(loop.stop)


def test_shutdown_ends_every_stream_in_flight_as_cancelled(tiny):
    engine = Engine(tiny.model, tiny.tokenizer, torch.device("cpu"), stop_token_ids={-1})
    engine.start()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    started = threading.Semaphore(0)

    async def one(n):
        req = GenerationRequest(list(range(3, 3 + n)), SamplingParams(temperature=0.0, max_new_tokens=1000, seed=n))
        first = True
        async for ev in engine.submit(req, loop):
            if isinstance(ev, TokenEvent) and first:
                first = False
                started.release()
        return ev.finish_reason

    futs = [asyncio.run_coroutine_threadsafe(one(n), loop) for n in (3, 4, 5, 6)]
    try:
        for _ in futs:
            assert started.acquire(timeout=60)
        engine.shutdown()
        assert [f.result(30) for f in futs] == ["cancelled"] * 4
    finally:
        loop.call_soon_threadsafe(loop.stop)
