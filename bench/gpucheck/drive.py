"""The one place that touches the engine: build it, then its EngineClient interface (submit,
cancel, load_adapter / unload_adapter, status) as the server uses it.

Everything else in the check goes through `Driver`, so a change of the engine's API is absorbed
here. The engine runs in process: its own thread owns the model; an asyncio loop in a second
thread receives the events and runs the interface's coroutines. The slot pool is set up as the
server's swap_backends.LocalAdapters does (engine.adapters), for its size and its spares.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.sampling import SamplingParams
from service.engine.core import Engine
from service.engine.events import EndEvent, GenerationRequest, TokenEvent
from service.engine.slots import AdapterSlots


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
        req = GenerationRequest(list(ask.prompt), ask.params, adapter=ask.adapter, cache_key=ask.cache_key)
        stream.submitted = time.perf_counter()
        stream.handle = self.engine.submit(req, self.loop)
        async for ev in stream.handle:
            if isinstance(ev, TokenEvent):
                stream.times.append(time.perf_counter())
                stream.tokens.append(ev.token_id)
                stream.logprobs.append(ev.logprob)
                stream.started.set()
            elif isinstance(ev, EndEvent):
                stream.reason, stream.error = str(ev.finish_reason), ev.error    # FinishReason is a StrEnum
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
        self.engine.cancel(stream.handle)

    # --- adapters (loaded on the engine thread, between decode steps) ----------------------
    def _await(self, coro, timeout: float = 300):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def use_slots(self, pool_size: int = 8) -> None:
        """LoRA slots as the server keeps them (swap_backends.LocalAdapters, REWARDLOOP_ADAPTER_SLOTS=8)."""
        self.slots = AdapterSlots(self.engine, pool_size=pool_size)
        self.engine.adapters = self.slots

    def load_adapter(self, version: str, folder: Path, valid=None) -> dict:
        """Load a version as the server does (validated weights, on the engine thread between
        forward passes); timings: total_s from asking to done, load_s the load itself, wait_s
        the wait for the forward pass in progress, path build|copy (into a free slot)."""
        if self.slots is None:
            self.use_slots()
        reused = self.slots.reused
        asked = time.perf_counter()
        took = self._await(self.engine.load_adapter(version, folder, valid))
        total = time.perf_counter() - asked
        return {"load_s": took.load_s, "total_s": total, "wait_s": total - took.load_s,
                "path": "copy" if self.slots.reused > reused else "build"}

    def add_spare(self, version: str):
        """One spare slot shaped like `version` (what LocalAdapters.after_swap asks after a swap)."""
        return self.engine.call(lambda: self.slots.add_spare(version)).result(300)

    def unload_adapter(self, version: str) -> bool:
        return self._await(self.engine.unload_adapter(version))

    def status(self) -> dict:
        e = self.engine
        return {**e.status(), "steps": e.steps, "batched_rows": e.batched_rows, "mixed_forwards": e.mixed_forwards,
                "failed_requests": e.failed_requests, "refs": dict(e.refs),
                "prefix": e.prefix.stats() if e.prefix is not None else None}

    def close(self) -> None:
        self.engine.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
