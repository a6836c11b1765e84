"""The one engine interface: what the serving layer, the hot-swap watcher and the runtime may
use of an engine, whichever it is (as vLLM v1's EngineClient: the callers never ask which).

Two engines implement it: `service.engine.core.Engine` (local: one thread owns a transformers +
PEFT model) and `service.engine.vllm.VllmEngine` (one or more vLLM OpenAI servers). A caller
holds an `EngineClient` and never probes it with hasattr/getattr; what only one engine has
(the local engine's `call` onto its thread, the vLLM engine's server list) is reached through
that engine's own type, where the caller knows which one it built.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from core.adapter_format import ValidAdapter
from service.engine.events import GenerationHandle, GenerationRequest


@dataclass(frozen=True)
class AdapterLoad:
    """How long loading one adapter version took, for the swap record and the log."""
    load_s: float                         # the load itself
    engine_wait_s: float | None = None    # queued behind forward passes (local engine only)

    def timing(self) -> dict[str, float]:
        """The swap record's timing fields (`load_s`, and `engine_wait_s` where measured)."""
        out = {"load_s": self.load_s}
        if self.engine_wait_s is not None:
            out["engine_wait_s"] = self.engine_wait_s
        return out


@runtime_checkable
class EngineClient(Protocol):
    """Generation behind one interface: submit a request, stream its events, cancel it; load and
    unload adapter versions; report status; close.

    Attributes both engines keep up to date (read by admission control and /metrics):
    `max_queue` (most requests waiting for their first token; None = no bound), `waiting` (how
    many wait now), `failed_requests`, `steps` (tokens generated), `refs` (adapter version ->
    streams using it: a version with streams is never unloaded) and `prefix` (the local
    prefix cache, whose `stats()` /metrics reads; None where the engine keeps none of its own).
    """
    max_queue: int | None
    waiting: int
    failed_requests: int
    steps: int
    refs: dict[str, int]
    prefix: object | None

    @property
    def alive(self) -> bool:
        """Can generate now (False before start, after shutdown, after the engine died)."""

    def start(self) -> None:
        """Blocking, off the event loop: make the engine ready to take requests."""

    def validate(self, request: GenerationRequest) -> None:
        """ValueError naming the field when the request is malformed."""

    def retry_after(self) -> int:
        """Seconds a refused client should wait before trying again."""

    def submit(self, request: GenerationRequest,
               loop: asyncio.AbstractEventLoop | None = None) -> GenerationHandle:
        """Queue a request; its events come through the handle and end with one EndEvent.
        ValueError if malformed, EngineBusy past `max_queue`; a stopped engine ends it at once
        with FinishReason.ERROR."""

    def cancel(self, handle: GenerationHandle) -> None:
        """Stop a request (the same as `handle.cancel()`): it ends with FinishReason.CANCELLED."""

    async def load_adapter(self, version: str, folder: Path, valid: ValidAdapter | None = None) -> AdapterLoad:
        """Make an adapter version servable; `valid` (from validate_adapter) spares a re-read."""

    async def unload_adapter(self, version: str) -> bool:
        """Free a version; refused (False) while a stream uses it."""

    def loaded_versions(self) -> list[str]:
        """Adapter versions this engine can serve now (base not included)."""

    def status(self) -> dict:
        """A JSON-ready view for operators: {"engine": "local" | "vllm", ...}."""

    def shutdown(self, timeout: float = 10) -> None:
        """Stop taking work; streams in flight end with FinishReason.CANCELLED."""

    async def aclose(self) -> None:
        """Release what the engine holds on the event loop (HTTP clients); after shutdown()."""
