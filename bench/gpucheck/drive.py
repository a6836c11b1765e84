"""The one place that touches the engine: build it, submit, cancel, load and unload adapters, status.

Everything else in the check goes through `Driver`, so a change of the engine's API (the
EngineClient protocol, typed events, a FinishReason enum) is absorbed here. The engine runs in
process: its own thread owns the model; an asyncio loop in a second thread receives the events.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.sampling import SamplingParams


def _engine_api():
    from service.engine.core import Engine, GenerationRequest, TokenEvent
    return Engine, GenerationRequest, TokenEvent


def reason_of(end) -> str:
    """The finish reason as plain text, whether the engine gives a str or an Enum."""
    reason = getattr(end, "finish_reason", None)
    return str(getattr(reason, "value", reason))


@dataclass
class Ask:
    """One request: prompt ids, sampling, adapter version (None = base), optional prefix-cache key."""
    prompt: list[int]
    params: SamplingParams
    adapter: str | None = None
    cache_key: tuple | None = None


@dataclass
class Stream:
    """What came back for one request."""
    ask: Ask
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)    # perf_counter at each token's arrival
    submitted: float = 0.0
    ended: float = 0.0
    reason: str = ""
    error: str | None = None
    handle: object = None
    started: threading.Event = field(default_factory=threading.Event)   # first token seen

    @property
    def ttft(self) -> float | None:
        return self.times[0] - self.submitted if self.times else None


class Driver:
    def __init__(self, model, tokenizer, device, *, max_batch: int = 32, prefill_chunk: int = 128,
                 prefix_cache_bytes: int = 0):
        Engine, self._Request, self._Token = _engine_api()
        # no stop tokens: every reply runs to max_new_tokens (fixed lengths, as min_new_tokens in generate)
        self.engine = Engine(model, tokenizer, torch.device(device), stop_token_ids={-1}, max_batch=max_batch,
                             prefill_chunk=prefill_chunk, prefix_cache_bytes=prefix_cache_bytes)
        self.engine.start()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gpucheck-loop", daemon=True)
        self._thread.start()
        self.slots = None

    # --- generation ---------------------------------------------------------------------
    async def _one(self, stream: Stream) -> Stream:
        ask = stream.ask
        req = self._Request(list(ask.prompt), ask.params, adapter=ask.adapter, cache_key=ask.cache_key)
        stream.submitted = time.perf_counter()
        stream.handle = self.engine.submit(req, self.loop)
        async for ev in stream.handle:
            if isinstance(ev, self._Token):
                stream.times.append(time.perf_counter())
                stream.tokens.append(ev.token_id)
                stream.logprobs.append(ev.logprob)
                stream.started.set()
            elif hasattr(ev, "finish_reason"):
                stream.reason, stream.error = reason_of(ev), getattr(ev, "error", None)
        stream.ended = time.perf_counter()
        stream.started.set()
        return stream

    def start(self, asks: list[Ask]) -> tuple[list[Stream], object]:
        """Submit all at once; returns the streams (filled as events come) and a future of them."""
        streams = [Stream(a) for a in asks]

        async def all_of():
            return await asyncio.gather(*[self._one(s) for s in streams])
        return streams, asyncio.run_coroutine_threadsafe(all_of(), self.loop)

    def run(self, asks: list[Ask], timeout: float = 600) -> list[Stream]:
        return self.start(asks)[1].result(timeout)

    def cancel(self, stream: Stream) -> None:
        cancel = getattr(self.engine, "cancel", None)        # EngineClient.cancel where the engine has it
        if cancel is not None:
            cancel(stream.handle)
        else:
            stream.handle.cancel()

    # --- adapters (loaded on the engine thread, between decode steps) ----------------------
    def call(self, fn, timeout: float = 300):
        return self.engine.call(fn).result(timeout)

    def use_slots(self, pool_size: int = 8) -> None:
        """LoRA slots as the server keeps them (REWARDLOOP_ADAPTER_SLOTS, default 8)."""
        from service.engine.slots import AdapterSlots
        self.slots = AdapterSlots(self.engine, pool_size=pool_size)
        self.engine.adapters = self.slots

    def load_adapter(self, version: str, folder: Path, valid=None) -> dict:
        """Load a version as the server does (validated weights, on the engine thread between
        forward passes); timings: total_s from asking to done, load_s the load itself, wait_s
        the wait for the forward pass in progress, path build|copy (into a free slot)."""
        if self.slots is None:
            self.use_slots()
        reused = self.slots.reused
        public = getattr(self.engine, "load_adapter", None)  # EngineClient.load_adapter (async)
        asked = time.perf_counter()
        if public is not None and asyncio.iscoroutinefunction(public):
            took = asyncio.run_coroutine_threadsafe(public(version, folder, valid), self.loop).result(300)
            timing = {"load_s": took.load_s}
        else:
            timing = {}

            def on_engine():
                t = time.perf_counter()
                self.slots.load(version, folder, valid)
                timing["load_s"] = time.perf_counter() - t
            self.call(on_engine)
        timing["total_s"] = time.perf_counter() - asked
        timing["wait_s"] = timing["total_s"] - timing["load_s"]
        timing["path"] = "copy" if self.slots.reused > reused else "build"
        return timing

    def add_spare(self, version: str):
        return self.call(lambda: self.slots.add_spare(version))

    def unload_adapter(self, version: str) -> bool:
        public = getattr(self.engine, "unload_adapter", None)
        if public is not None and asyncio.iscoroutinefunction(public):
            return asyncio.run_coroutine_threadsafe(public(version), self.loop).result(300)
        return self.call(lambda: self.slots.unload(version))

    def status(self) -> dict:
        e = self.engine
        return {"steps": e.steps, "batched_rows": e.batched_rows, "mixed_forwards": e.mixed_forwards,
                "failed_requests": e.failed_requests, "refs": dict(e.refs),
                "prefix": e.prefix.stats() if e.prefix is not None else None}

    def close(self) -> None:
        self.engine.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
