"""The batched sampler: every row of a decode step in one call on the logits' device, each
row on its own seeded generator. It draws what the per-row sampler draws, records the
behavior log-prob the learner recomputes (processed_logprobs), and the engine built on it
runs on the model's dtype and gives a sampled reply that does not depend on its batch."""
from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from core.sampling import SamplingParams, processed_logprobs, sample_batch, sample_token

PARAMS = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.7, top_p=0.9, seed=1),
          SamplingParams(temperature=1.3, top_p=1.0, seed=2), SamplingParams(temperature=0.5, top_p=0.3, seed=3),
          SamplingParams(temperature=2.0, top_p=0.99, seed=4),   # flat: the nucleus spills past the top-k
          SamplingParams(temperature=1.0, top_p=1.0, seed=5)]


def _gens(params):
    return [torch.Generator().manual_seed(p.seed) for p in params]


def test_the_batched_sampler_draws_what_the_per_row_sampler_draws_step_after_step():
    torch.manual_seed(0)
    batched_gens, row_gens = _gens(PARAMS), _gens(PARAMS)
    for step in range(20):
        logits = torch.randn(len(PARAMS), 1000) * (3 if step % 2 else 0.3)   # [B, V], peaked and flat steps
        toks, lps = sample_batch(logits, PARAMS, batched_gens)
        assert toks.shape == lps.shape == (len(PARAMS),) and toks.dtype == torch.long
        for i, p in enumerate(PARAMS):
            tok, lp = sample_token(logits[i], p, row_gens[i])
            assert (int(toks[i]), float(lps[i])) == (tok, pytest.approx(lp, abs=1e-6)), f"row {i} step {step}"
            assert float(lps[i]) == pytest.approx(processed_logprobs(logits[i], p)[tok].item(), abs=1e-5)
            assert torch.isfinite(lps[i])                     # never a token outside the nucleus


def test_a_rows_draws_do_not_depend_on_the_rows_beside_it():
    torch.manual_seed(1)
    logits = torch.randn(3, 500)
    p = SamplingParams(temperature=1.0, top_p=0.8, seed=9)
    alone = [sample_batch(logits[:1], [p], _gens([p]))[0].item() for _ in range(2)]
    mixed = sample_batch(logits, [p, PARAMS[0], PARAMS[3]], _gens([p, PARAMS[0], PARAMS[3]]))[0][0].item()
    assert alone[0] == alone[1] == mixed


def test_sampled_tokens_follow_the_distribution():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    p = SamplingParams(temperature=1.0, top_p=1.0, seed=0)
    g = _gens([p])
    counts = torch.zeros(4)
    for _ in range(4000):
        counts[sample_batch(logits, [p], g)[0][0]] += 1
    assert torch.allclose(counts / 4000, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": True}, "temperature"), ({"temperature": float("inf")}, "temperature"),
    ({"temperature": "0.7"}, "temperature"), ({"temperature": 1e-9}, "temperature"),
    ({"top_p": float("nan")}, "top_p"), ({"top_p": None}, "top_p"),
    ({"max_new_tokens": float("nan")}, "max_new_tokens"), ({"max_new_tokens": float("inf")}, "max_new_tokens"),
    ({"max_new_tokens": 12.0}, "max_new_tokens"), ({"max_new_tokens": True}, "max_new_tokens"),
    ({"max_new_tokens": 10 ** 30}, "max_new_tokens"),
    ({"seed": 2 ** 64}, "seed"), ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": False}, "seed"),
])
def test_bad_sampling_values_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_the_engine_runs_on_the_models_dtype_and_seeded_replies_reproduce(models_dir):
    """Devices and dtypes come from the model: a bf16 model decodes batched with bf16 KV rows;
    seeded, sampled streams give the same tokens when run again, other seeds other tokens.
    (Alone vs batched equality is greedy's, in test_batching: the tiny random model is nearly
    uniform, where float rounding between a batched and a lone forward may move a draw.)"""
    from core.modeling import load_model
    from service.engine.core import Engine, GenerationRequest, TokenEvent
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def run(engine, reqs):
        async def one(r):
            return [ev.token_id for ev in [e async for e in engine.submit(r, loop)] if isinstance(ev, TokenEvent)]
        return await asyncio.gather(*[one(r) for r in reqs])

    def generate(engine, reqs):
        return asyncio.run_coroutine_threadsafe(run(engine, reqs), loop).result(120)

    def reqs(seed0):
        return [GenerationRequest(list(range(3, 3 + n)), SamplingParams(temperature=0.9, top_p=0.95,
                                                                        max_new_tokens=12, seed=seed0 + n))
                for n in (3, 5, 8)]
    try:
        for dtype in (torch.float32, torch.bfloat16):
            loaded = load_model("tiny-random", models_dir, "cpu")
            engine = Engine(loaded.model.to(dtype), loaded.tokenizer, loaded.device, stop_token_ids={-1})
            engine.start()
            try:
                first = generate(engine, reqs(0))
                assert engine.batched_rows > 0 and all(len(t) == 12 for t in first)
                assert generate(engine, reqs(0)) == first
                assert generate(engine, reqs(100)) != first
            finally:
                engine.shutdown()
    finally:
        loop.call_soon_threadsafe(loop.stop)
