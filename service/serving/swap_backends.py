"""Where the hot-swap watcher puts adapter versions: one backend per engine.

- `LocalAdapters`: LoRA slots in this process's model, loaded on the engine thread between
  decode steps (service/engine/slots.py).
- `VllmAdapters`: LoRAs loaded at runtime on every vLLM server (`/v1/load_lora_adapter`)
  under the name `rl-v{N}`, confirmed listed by each server before the version counts as
  loaded, so routing never sends a request to a server without it.

Both take a folder that `core.adapter_format.validate_adapter` passed and report the same
timings to the watcher, which keeps the swap records and metrics the same for both engines.
"""
from __future__ import annotations

from pathlib import Path

from core.adapter_format import AdapterInvalid, ValidAdapter
from service.engine.core import Engine
from service.engine.slots import AdapterSlots
from service.engine.vllm import AdapterRefused, VllmEngine


def _log_failure(fut) -> None:
    import logging
    if not fut.cancelled() and fut.exception() is not None:
        logging.getLogger(__name__).warning("could not prepare a spare adapter slot: %s", fut.exception())


class LocalAdapters:
    kind = "local"

    def __init__(self, engine: Engine, slots: int):
        self.engine = engine
        self.slots = AdapterSlots(engine, pool_size=slots)
        engine.adapters = self.slots
        self.module_names = {n for n, _ in engine.model.named_modules()}

    def loaded(self) -> list[str]:
        return self.engine.loaded_versions()

    async def refresh(self) -> None:
        """Nothing to ask: this process's slots are what is loaded."""

    async def load(self, version: str, folder: Path, valid: ValidAdapter, timing: dict) -> None:
        """Into a slot on the engine thread, between forward passes (the engine's `self.slots`)."""
        timing.update((await self.engine.load_adapter(version, folder, valid)).timing())

    async def unload(self, version: str) -> bool:
        return await self.engine.unload_adapter(version)

    def after_swap(self, version: str) -> None:
        """Fill the slot pool after a swap (not awaited), one slot per engine call so streams move
        in between: later versions are then copies in place."""
        if version not in self.slots.loaded:
            return
        for _ in range(self.slots.pool_size - len(self.slots.shape)):
            spare = self.engine.call(lambda v=version: self.slots.add_spare(v))
            spare.add_done_callback(_log_failure)

    def status(self) -> dict:
        weight = next(self.engine.model.parameters())
        return {"slots": len(self.slots.shape), "slot_pool": self.slots.pool_size, "device": str(weight.device),
                "dtype": str(weight.dtype).removeprefix("torch.")}


class VllmAdapters:
    kind = "vllm"

    def __init__(self, engine: VllmEngine, module_names: set[str]):
        self.engine = engine
        self.module_names = module_names   # of the base model (built on the meta device: no weights)
        self.taken: set[str] = set()       # versions this server validated and loaded (or found loaded)

    def loaded(self) -> list[str]:
        """Versions listed on every vLLM server that is up and taken in by this server: another
        rewardloop server having loaded a version does not spare this one its validation (nor
        its swap record)."""
        return [v for v in self.engine.loaded_versions() if v in self.taken]

    async def refresh(self) -> None:
        """Re-read what every server lists: a restarted server has lost its LoRAs (they are then
        loaded again), a server marked down comes back."""
        await self.engine.refresh()

    async def load(self, version: str, folder: Path, valid: ValidAdapter, timing: dict) -> None:
        try:
            done = await self.engine.load_adapter(version, folder, valid)
        except AdapterRefused as exc:   # vLLM says no (e.g. rank above its --max-lora-rank): never serve it
            raise AdapterInvalid(str(exc)) from None
        timing.update(done.timing())
        self.taken.add(version)

    async def unload(self, version: str) -> bool:
        if await self.engine.unload_adapter(version):
            self.taken.discard(version)
            return True
        return False

    def after_swap(self, version: str) -> None:
        pass

    def status(self) -> dict:
        return self.engine.status()
