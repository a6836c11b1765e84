"""Adapter slots: LoRA versions resident in one server's model.

`core.adapter_format.validate_adapter` runs off the engine thread (hashing and reading
weights takes time); `AdapterSlots` methods run ON the engine thread, between decode steps, so loading,
activating and unloading never race a forward pass.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from core.adapter_format import CONFIG_FILE, WEIGHTS, ValidAdapter
from core.versions import is_base

log = logging.getLogger(__name__)
def _shape_signature(cfg: dict) -> str:
    """What must match for one adapter's weights to be copied into another's slot."""
    targets = cfg.get("target_modules") or []
    return json.dumps({"r": cfg.get("r"), "alpha": cfg.get("lora_alpha"), "rslora": cfg.get("use_rslora", False),
                       "dora": cfg.get("use_dora", False), "bias": cfg.get("bias", "none"),
                       "targets": sorted([targets] if isinstance(targets, str) else targets)}, sort_keys=True)


class AdapterSlots:
    """Engine-thread-only bookkeeping of the LoRA versions loaded into the model.

    Versions live in PEFT adapter *slots* ("slot0", "slot1", ...). A slot freed by an
    unloaded version is kept and reused by the next version of the same shape: copying
    weights in place takes milliseconds, where building new LoRA modules takes far longer.
    """

    def __init__(self, engine, pool_size: int = 5):
        self.engine = engine
        self.pool_size = pool_size            # slots kept (loaded + free); free ones beyond are deleted
        self.loaded: dict[str, Path] = {}     # version -> folder
        self.slot_of: dict[str, str] = {}     # version -> PEFT adapter name
        self.shape: dict[str, str] = {}       # slot -> shape signature
        self.free: list[str] = []             # slots no version uses
        self.active: str | None = None        # None = base (adapter layers disabled)
        self.reused = 0
        self._next = 0
        self._layers: list | None = None     # PEFT's LoRA layers, found once per change of slots

    def load(self, version: str, folder: Path, valid: ValidAdapter | None = None) -> None:
        """Load a version; `valid` (from validate_adapter) saves reading the folder again."""
        if version in self.loaded:
            return
        if valid is None:
            from safetensors.torch import load_file
            valid = ValidAdapter({}, json.loads((Path(folder) / CONFIG_FILE).read_text()),
                                 load_file(Path(folder) / WEIGHTS))
        sig = _shape_signature(valid.config)
        slot = next((s for s in self.free if self.shape[s] == sig), None)
        if slot is not None and self._copy_into(slot, valid.tensors):
            self.free.remove(slot)
            self.reused += 1
        else:
            slot = self._build_slot(folder, sig)
        self.slot_of[version] = slot
        self.loaded[version] = Path(folder)
        self.active = "?"  # force the next activate() to set state explicitly

    def add_spare(self, version: str) -> str | None:
        """Build one free slot shaped like `version`'s while the pool is below its size, so
        later versions of that shape are copied in (milliseconds) instead of built (0.3-0.6 s
        of PEFT module surgery on the engine thread, during which no stream moves). The
        watcher asks for this after a swap, one slot per engine call, off the swap's path."""
        if version not in self.loaded or len(self.shape) >= self.pool_size:
            return None
        slot = self._build_slot(self.loaded[version], self.shape[self.slot_of[version]])
        self.free.append(slot)
        self.active = "?"
        return slot

    def _build_slot(self, folder: Path, sig: str) -> str:
        """New PEFT adapter modules named slotN, loaded from `folder` (the slow path)."""
        from peft import PeftModel
        slot = f"slot{self._next}"
        self._next += 1
        if not isinstance(self.engine.model, PeftModel):
            self.engine.model = PeftModel.from_pretrained(self.engine.model, str(folder), adapter_name=slot,
                                                          is_trainable=False)
        else:
            self.engine.model.load_adapter(str(folder), adapter_name=slot, is_trainable=False)
        self.engine.model.eval()
        self._layers = None
        self.shape[slot] = sig
        return slot

    def _copy_into(self, slot: str, tensors: dict[str, torch.Tensor]) -> bool:
        """Overwrite a free slot's LoRA weights with these; False if they do not line up."""
        params = {n: p for n, p in self.engine.model.named_parameters() if f".{slot}." in n}
        if len(params) != len(tensors):
            return False
        pairs = []
        for key, tensor in tensors.items():
            head, leaf = key.rsplit(".", 1)          # PEFT saves names without the adapter name
            param = params.get(f"{head}.{slot}.{leaf}")
            if param is None or param.shape != tensor.shape:
                return False
            pairs.append((param, tensor))
        with torch.no_grad():
            for param, tensor in pairs:
                param.copy_(tensor.to(param.dtype))
        return True

    def unload(self, version: str) -> bool:
        """Free a version's slot; refused (False) while a stream uses it."""
        if version not in self.loaded or self.engine.refs.get(version, 0) > 0:
            return False
        slot = self.slot_of.pop(version)
        del self.loaded[version]
        self.free.append(slot)
        self.active = "?"
        while self.free and len(self.shape) > self.pool_size:
            self._delete(self.free.pop(0))
        return True

    def _delete(self, slot: str) -> None:
        model = self.engine.model
        keep = next(iter(self.slot_of.values()), None) or next((s for s in self.free), None)
        if keep is None:  # PEFT cannot delete its last adapter: keep it, disabled
            self.free.append(slot)
            return
        model.set_adapter(keep)
        model.delete_adapter(slot)
        self._layers = None
        del self.shape[slot]

    def activate(self, version: str | None) -> None:
        version = None if is_base(version) else version
        if version == self.active:
            return
        if version is not None and version not in self.loaded:
            raise KeyError(f"adapter version {version} is not loaded on this server")
        if not self.shape:  # nothing was ever loaded: the plain model is the base
            self.active = None
            return
        slot = None if version is None else self.slot_of[version]
        if not self._switch(slot):
            model = self.engine.model
            if slot is None:
                model.base_model.disable_adapter_layers()
            else:
                model.base_model.enable_adapter_layers()
                model.set_adapter(slot)
        self.active = version

    def names_for(self, versions: list[str | None]) -> list[str]:
        """PEFT adapter names for one forward over rows on these versions ("__base__" = no
        adapter), for PEFT's mixed-adapter batch; leaves the LoRA layers enabled, which
        that forward needs."""
        names = []
        for v in versions:
            v = None if is_base(v) else v
            if v is not None and v not in self.loaded:
                raise KeyError(f"adapter version {v} is not loaded on this server")
            names.append("__base__" if v is None else self.slot_of[v])
        self.activate(next((v for v in versions if not is_base(v)), None))
        return names

    def _switch(self, slot: str | None) -> bool:
        """Point every LoRA layer at `slot` (None = adapters off) by setting the two fields
        its forward reads. PEFT's own set_adapter also flips requires_grad on every LoRA
        weight, ~20 ms a switch on SmolLM2, paid on every step when streams on two versions
        interleave; serving runs without gradients, so this skips that. False (use PEFT's
        way) if this PEFT version keeps the state elsewhere."""
        if self._layers is None:
            from peft.tuners.tuners_utils import BaseTunerLayer
            self._layers = [m for m in self.engine.model.modules() if isinstance(m, BaseTunerLayer)]
        if not self._layers or not (hasattr(self._layers[0], "_active_adapter")
                                    and hasattr(self._layers[0], "_disable_adapters")):
            return False
        for layer in self._layers:
            layer._disable_adapters = slot is None
            if slot is not None:
                layer._active_adapter = [slot]
        if slot is not None:
            self.engine.model.base_model.active_adapter = slot
        probe = self._layers[0]
        return probe.disable_adapters == (slot is None) and (slot is None or probe.active_adapters == [slot])
