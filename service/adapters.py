"""Adapter slots: LoRA versions resident in one server's model.

`validate_adapter` runs off the engine thread (hashing and reading weights takes time);
`AdapterSlots` methods run ON the engine thread, between decode steps, so loading,
activating and unloading never race a forward pass.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from learner.registry import sha256_file  # the same digest the registry writes into manifests

log = logging.getLogger(__name__)
WEIGHTS = "adapter_model.safetensors"


class AdapterInvalid(ValueError):
    """The adapter must not be served; the message says why."""


def validate_adapter(folder: Path, model_id: str, module_names: set[str], max_rank: int = 256) -> dict:
    """Check a version folder before it may be loaded; returns its manifest."""
    folder = Path(folder)
    for name in ("manifest.json", "adapter_config.json", WEIGHTS):
        if not (folder / name).exists():
            raise AdapterInvalid(f"{folder} has no {name}")
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        config = json.loads((folder / "adapter_config.json").read_text())
    except ValueError as exc:
        raise AdapterInvalid(f"{folder}: unreadable JSON ({exc})") from None
    digest = sha256_file(folder / WEIGHTS)
    if digest != manifest.get("sha256"):
        raise AdapterInvalid(f"checksum mismatch: weights hash to {digest[:12]}…, manifest says "
                             f"{str(manifest.get('sha256'))[:12]}… (corrupt or tampered file)")
    if manifest.get("base_model") != model_id:
        raise AdapterInvalid(f"adapter was trained for base model {manifest.get('base_model')!r}, "
                             f"this server runs {model_id!r}")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterInvalid(f"only LoRA adapters are served, got {config.get('peft_type')!r}")
    rank = int(config.get("r", 0))
    if not 0 < rank <= max_rank:
        raise AdapterInvalid(f"LoRA rank {rank} is outside 1..{max_rank}")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    leaves = {n.rsplit(".", 1)[-1] for n in module_names}
    missing = [t for t in targets if t not in leaves and t != "all-linear"]
    if missing:
        raise AdapterInvalid(f"target modules {missing} do not exist in {model_id}")
    from safetensors.torch import load_file
    for name, tensor in load_file(folder / WEIGHTS).items():
        if not torch.isfinite(tensor).all():
            raise AdapterInvalid(f"weight {name} has NaN or infinite values")
    return manifest


class AdapterSlots:
    """Engine-thread-only bookkeeping of the LoRA versions loaded into the model."""

    def __init__(self, engine):
        self.engine = engine
        self.loaded: dict[str, Path] = {}
        self.active: str | None = None  # None = base (adapter layers disabled)
        self._layers_on = False

    @property
    def peft(self) -> bool:
        return bool(self.loaded)

    def load(self, version: str, folder: Path) -> None:
        from peft import PeftModel
        if version in self.loaded:
            return
        if not self.loaded and not isinstance(self.engine.model, PeftModel):
            self.engine.model = PeftModel.from_pretrained(self.engine.model, str(folder), adapter_name=version,
                                                          is_trainable=False)
        else:
            self.engine.model.load_adapter(str(folder), adapter_name=version, is_trainable=False)
        self.engine.model.eval()
        self.loaded[version] = Path(folder)
        self.active = "?"  # force the next activate() to set state explicitly

    def unload(self, version: str) -> bool:
        """Drop a version; refused (False) while a stream uses it."""
        if version not in self.loaded or self.engine.refs.get(version, 0) > 0:
            return False
        if len(self.loaded) == 1:
            # PEFT cannot delete its last adapter; keep it, disabled, until another arrives.
            self.activate(None)
            return False
        others = [v for v in self.loaded if v != version]
        self.engine.model.set_adapter(others[0])
        self.engine.model.delete_adapter(version)
        del self.loaded[version]
        self.active = "?"
        return True

    def activate(self, version: str | None) -> None:
        version = None if version in (None, "base") else version
        if version == self.active:
            return
        if version is not None and version not in self.loaded:
            raise KeyError(f"adapter version {version} is not loaded on this server")
        if not self.loaded:
            self.active = None
            return
        model = self.engine.model
        if version is None:
            model.base_model.disable_adapter_layers()
        else:
            model.base_model.enable_adapter_layers()
            model.set_adapter(version)
        self.active = version
