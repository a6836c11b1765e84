"""No request can stop the engine: a request that fails ends alone with finish_reason
"error" while the others go on; malformed requests are refused before the thread; a thread
that dies anyway ends every stream it held, refuses new work at once and reports its death."""
from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from core.modeling import load_model
from core.sampling import SamplingParams
from service.engine.core import EndEvent, Engine, EngineStopped, GenerationRequest, TokenEvent


def _run(loop, coro, timeout=120):
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


async def _collect(engine, req, loop, started: threading.Semaphore | None = None):
    toks, end = [], None
    async for ev in engine.submit(req, loop):
        if isinstance(ev, TokenEvent):
            toks.append(ev.token_id)
            if len(toks) == 2 and started is not None:
                started.release()
        elif isinstance(ev, EndEvent):
            end = ev
    return toks, end


def _greedy(n: int, tokens: int = 40) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=tokens, seed=n)


def test_a_request_whose_adapter_slot_raises_ends_alone_and_the_others_go_on(models_dir, tmp_path, loop):
    from service.engine.slots import AdapterSlots
    from tests.support.models import save_random_adapter
    loaded = load_model("tiny-random", models_dir, "cpu")
    engine = Engine(loaded.model, loaded.tokenizer, loaded.device, stop_token_ids={-1})
    engine.adapters = AdapterSlots(engine)
    engine.adapters.load("1", save_random_adapter(models_dir, tmp_path / "v1", seed=1))
    engine.start()
    try:
        reqs = [GenerationRequest(list(range(3, 3 + n)), _greedy(n), adapter=v)
                for n, v in ((4, None), (6, "1"), (5, None))]
        alone = [_run(loop, _collect(engine, r, loop))[0] for r in (reqs[0], reqs[2])]
        started = threading.Semaphore(0)
        futs = [asyncio.run_coroutine_threadsafe(_collect(engine, r, loop, started), loop) for r in reqs]
        for _ in reqs:
            assert started.acquire(timeout=60)
        # Version 1's slot now raises (as if its bookkeeping broke) in the middle of batched steps.
        engine.call(lambda: engine.adapters.loaded.pop("1")).result(30)
        results = [f.result(120) for f in futs]
    finally:
        engine.shutdown()
    (t0, e0), (_, e1), (t2, e2) = results
    assert e1.finish_reason == "error" and "not loaded" in e1.error
    assert (e0.finish_reason, e2.finish_reason) == ("length", "length")
    assert [t0, t2] == alone, "the streams batched with the failing one were disturbed"
    assert engine.failed_requests == 1 and engine.batched_rows > 0
    assert engine.refs == {"1": 0, "base": 0}


@pytest.mark.parametrize("prompt_ids, params, adapter", [
    ([], _greedy(1), None),
    ([1, 2, 10 ** 9], _greedy(1), None),           # beyond the vocabulary
    ([1, True, 3], _greedy(1), None),              # a bool is not a token id
    ([1, 2.0], _greedy(1), None),
    ("123", _greedy(1), None),
    ([1, 2], {"temperature": 0}, None),
    ([1, 2], _greedy(1), 7),
])
def test_a_malformed_request_is_refused_before_the_engine_thread(models_dir, loop, prompt_ids, params, adapter):
    loaded = load_model("tiny-random", models_dir, "cpu")
    engine = Engine(loaded.model, loaded.tokenizer, loaded.device, stop_token_ids={-1})
    engine.start()
    try:
        with pytest.raises(ValueError):
            engine.submit(GenerationRequest(prompt_ids, params, adapter), loop)
        toks, end = _run(loop, _collect(engine, GenerationRequest([5, 6, 7], _greedy(1, 5)), loop))
        assert end.finish_reason == "length" and len(toks) == 5
    finally:
        engine.shutdown()


class _Die(BaseException):
    """What no per-request handler catches (as a KeyboardInterrupt or a C-level abort would)."""


def test_an_engine_thread_that_dies_ends_every_stream_and_refuses_new_work_at_once(models_dir, loop):
    loaded = load_model("tiny-random", models_dir, "cpu")
    deaths: list[str] = []
    engine = Engine(loaded.model, loaded.tokenizer, loaded.device, stop_token_ids={-1}, on_death=deaths.append)
    engine.start()
    assert engine.alive
    started = threading.Semaphore(0)
    futs = [asyncio.run_coroutine_threadsafe(
        _collect(engine, GenerationRequest(list(range(3, 3 + n)), _greedy(n, 10_000)), loop, started), loop)
        for n in (3, 4)]
    for _ in futs:
        assert started.acquire(timeout=60)

    def die():
        raise _Die("injected")
    killer = engine.call(die)
    ends = [f.result(30)[1] for f in futs]
    assert [e.finish_reason for e in ends] == ["error", "error"] and "_Die" in ends[0].error
    with pytest.raises(_Die):
        killer.result(5)
    engine._thread.join(5)
    assert not engine.alive and deaths and "_Die" in deaths[0]
    toks, end = _run(loop, _collect(engine, GenerationRequest([5, 6], _greedy(1)), loop), timeout=5)
    assert toks == [] and end.finish_reason == "error" and "stopped" in end.error
    with pytest.raises(EngineStopped):
        engine.call(lambda: 1).result(5)


def test_on_end_set_after_submit_is_called_once_even_when_the_end_came_first(models_dir, loop):
    """ChatService counts a user's streams and sets on_end after submit(); a stopped engine ends
    the request inside submit(), and a short one can end before the caller gets back. Either way
    on_end runs exactly once, or the user's stream count leaks until they are refused."""
    loaded = load_model("tiny-random", models_dir, "cpu")
    engine = Engine(loaded.model, loaded.tokenizer, loaded.device, stop_token_ids={-1})
    engine.start()
    calls: list[str] = []

    async def submit_then_set(name: str, settle: bool):
        handle = engine.submit(GenerationRequest([5, 6], _greedy(1, 2)), loop)
        if settle:   # let the EndEvent reach the loop before on_end is set
            async for ev in handle:
                pass
        handle.on_end = lambda: calls.append(name)
        await asyncio.sleep(0.05)
    _run(loop, submit_then_set("live, set at once", settle=False))
    _run(loop, submit_then_set("live, set after the end", settle=True))
    engine.shutdown()
    _run(loop, submit_then_set("stopped engine", settle=False))
    assert calls == ["live, set at once", "live, set after the end", "stopped engine"]


def test_nan_logits_end_that_stream_alone(models_dir, tmp_path, loop):
    """A row whose logits are NaN (here: an adapter with NaN weights, batched with a base
    row in one mixed forward) ends; the row beside it goes on."""
    from service.engine.slots import AdapterSlots
    from tests.support.models import save_random_adapter
    loaded = load_model("tiny-random", models_dir, "cpu")
    engine = Engine(loaded.model, loaded.tokenizer, loaded.device, stop_token_ids={-1})
    engine.adapters = AdapterSlots(engine)
    engine.adapters.load("1", save_random_adapter(models_dir, tmp_path / "v1", seed=1))
    with torch.no_grad():
        for name, p in engine.model.named_parameters():
            if "lora_B" in name:
                p.fill_(float("nan"))
    engine.start()
    try:
        async def both():
            return await asyncio.gather(
                _collect(engine, GenerationRequest([5, 6, 7], _greedy(1, 8), adapter="1"), loop),
                _collect(engine, GenerationRequest([5, 6, 7], _greedy(2, 8)), loop))
        (bad_toks, bad), (good_toks, good) = _run(loop, both())
    finally:
        engine.shutdown()
    assert bad.finish_reason == "error" and "NaN" in bad.error and bad_toks == []
    assert good.finish_reason == "length" and len(good_toks) == 8
