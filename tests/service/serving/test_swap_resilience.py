"""The hot-swap watcher survives what it did not expect: an exception inside a load or a pass
is logged and counted and the watcher keeps watching; a transient load failure is retried
(with backoff) instead of refusing the version forever. Real Redis, a real engine on the tiny
model, a real LoRA published through the registry."""
from __future__ import annotations

import asyncio

import pytest

from core.keys import Keys
from core.modeling import load_model
from core.redis_conn import connect_async
from service.engine.core import Engine
from service.serving import swap
from tests.support.models import publish_adapter, train_parrot_adapter
from tests.support.waiting import wait_for_async

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def parrot(models_dir):
    return train_parrot_adapter(models_dir, " alpha" * 4, steps=5)


@pytest.fixture
def engine(models_dir):
    loaded = load_model("tiny-random", models_dir, device="cpu")
    eng = Engine(loaded.model, loaded.tokenizer, loaded.device)
    eng.start()
    yield eng, loaded.model_id
    eng.shutdown()


def test_a_load_that_raises_is_retried_and_the_watcher_keeps_going(engine, parrot, redis_url, prefix, tmp_path,
                                                                    monkeypatch):
    eng, model_id = engine
    monkeypatch.setattr(swap, "RETRY_FIRST_S", 0.2)
    data = tmp_path / "data"
    version = publish_adapter(redis_url, prefix, data, parrot, model_id)

    async def scenario():
        r = connect_async(redis_url)
        watcher = swap.AdapterWatcher(r, Keys(prefix), eng, model_id, data / "adapters", resync_s=0.2)
        real_load = watcher.slots.load
        calls = []

        def flaky_load(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("simulated: out of memory while building the slot")
            return real_load(*args, **kwargs)

        watcher.slots.load = flaky_load
        real_reconcile = watcher.reconcile
        passes = []

        async def reconcile_that_breaks_once():
            passes.append(1)
            if len(passes) == 2:
                raise KeyError("simulated bug in one pass")
            await real_reconcile()

        watcher.reconcile = reconcile_that_breaks_once
        task = asyncio.create_task(watcher.run())
        try:
            await wait_for_async(lambda: watcher.servable(version), 20, f"version {version} servable")
            assert len(calls) == 2                  # failed once, retried, loaded
            assert version not in watcher.refused   # a transient failure refuses nothing
            assert watcher.errors >= 1 and not task.done()   # the broken pass was survived
            swaps = [f for _, f in await r.xrange(Keys(prefix).adapter_swaps)]
            results = [f[b"result"].decode() for f in swaps if f[b"version"].decode() == version]
            assert results[:2] == ["failed", "loaded"], results
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await r.aclose()

    asyncio.run(scenario())
