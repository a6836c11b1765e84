"""Both engines implement the one EngineClient interface (same members, same parameters), the
finish reasons are the strings the records and APIs carry, and a load/unload of an adapter
through the interface reaches the local engine's slots."""
from __future__ import annotations

import asyncio
import inspect
import json

import pytest

from core.modeling import load_model
from service.engine.core import Engine
from service.engine.events import EndEvent, FinishReason
from service.engine.interface import EngineClient
from service.engine.vllm import VllmEngine

MEMBERS = [n for n in vars(EngineClient) if not n.startswith("_")]


def _params(fn) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("engine_class", [Engine, VllmEngine])
def test_each_engine_has_every_interface_method_with_its_parameters(engine_class):
    for name in MEMBERS:
        want = getattr(EngineClient, name)
        have = getattr(engine_class, name, None)
        assert have is not None, f"{engine_class.__name__} lacks {name}"
        if isinstance(want, property):
            assert isinstance(have, property), f"{engine_class.__name__}.{name} should be a property"
        elif callable(want):
            assert _params(have) == _params(want), f"{engine_class.__name__}.{name} differs from EngineClient"
            assert inspect.iscoroutinefunction(have) == inspect.iscoroutinefunction(want), name


def test_a_vllm_engine_is_an_engine_client_before_any_server_answers():
    engine = VllmEngine(["http://127.0.0.1:9"], tokenizer=None, vocab_size=10, stop_token_ids={1})
    assert isinstance(engine, EngineClient)
    assert engine.status()["engine"] == "vllm" and engine.loaded_versions() == []


def test_finish_reasons_are_the_plain_strings_records_and_apis_carry():
    assert [str(r) for r in FinishReason] == ["stop", "length", "cancelled", "error"]
    end = EndEvent.unstarted(FinishReason.ERROR, 1.0, 2.0, "why")
    assert end.finish_reason == "error" and f"{end.finish_reason}" == "error"
    assert json.dumps({"finish_reason": end.finish_reason}) == '{"finish_reason": "error"}'
    assert (end.n_tokens, end.first_token_at, end.error) == (0, None, "why")


def test_the_local_engine_loads_and_unloads_an_adapter_through_the_interface(models_dir, tmp_path, loop):
    from tests.support.models import save_random_adapter
    loaded = load_model("tiny-random", models_dir, "cpu")
    engine = Engine(loaded.model, loaded.tokenizer, loaded.device, stop_token_ids={-1})
    assert isinstance(engine, EngineClient)
    engine.start()
    try:
        folder = save_random_adapter(models_dir, tmp_path / "v1", seed=1)
        done = asyncio.run_coroutine_threadsafe(engine.load_adapter("1", folder), loop).result(60)
        assert engine.loaded_versions() == ["1"] and set(done.timing()) == {"load_s", "engine_wait_s"}
        assert done.load_s > 0 and engine.status()["engine"] == "local" and engine.status()["alive"]
        assert asyncio.run_coroutine_threadsafe(engine.unload_adapter("1"), loop).result(60) is True
        assert engine.loaded_versions() == []
    finally:
        engine.shutdown()
    assert not engine.status()["alive"]
