"""The adapter folder format, in one place: what the learner writes and every engine checks.

A version folder is a standard PEFT LoRA folder (adapter_config.json,
adapter_model.safetensors; PeftModel.from_pretrained loads it) plus manifest.json (version,
parent, sha256 of the weights, base model id, training stats, reward config hash, ...).
`validate_adapter` is the one check before anything serves a folder: files present, checksum,
base model, LoRA only (no DoRA: it cannot share a mixed-adapter batch), rank, target
modules, finite weights.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
MANIFEST_FILE = "manifest.json"
WEIGHTS = WEIGHTS_FILE


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class AdapterInvalid(ValueError):
    """The adapter must not be served; the message says why."""


@dataclass(frozen=True)
class ValidAdapter:
    """A version folder that passed validation, with the weights it was checked on: the
    engine copies exactly these (one read of the file, and no window for it to change)."""
    manifest: dict
    config: dict
    tensors: dict[str, torch.Tensor]


def validate_adapter(folder: Path, model_id: str, module_names: set[str], max_rank: int = 256) -> ValidAdapter:
    """Check a version folder before it may be loaded."""
    folder = Path(folder)
    for name in (MANIFEST_FILE, CONFIG_FILE, WEIGHTS):
        if not (folder / name).exists():
            raise AdapterInvalid(f"{folder} has no {name}")
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        config = json.loads((folder / CONFIG_FILE).read_text())
    except ValueError as exc:
        raise AdapterInvalid(f"{folder}: unreadable JSON ({exc})") from None
    raw = (folder / WEIGHTS).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()   # the registry's sha256_file digest, from the bytes in hand
    if digest != manifest.get("sha256"):
        raise AdapterInvalid(f"checksum mismatch: weights hash to {digest[:12]}…, manifest says "
                             f"{str(manifest.get('sha256'))[:12]}… (corrupt or tampered file)")
    if manifest.get("base_model") != model_id:
        raise AdapterInvalid(f"adapter was trained for base model {manifest.get('base_model')!r}, "
                             f"this server runs {model_id!r}")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterInvalid(f"only LoRA adapters are served, got {config.get('peft_type')!r}")
    if config.get("use_dora"):
        # streams on several versions share one forward pass (PEFT's mixed-adapter batch),
        # which PEFT refuses for DoRA: one such version would fail every step it shares
        raise AdapterInvalid("DoRA adapters are not served (they cannot share a batch with other versions); "
                             "train with use_dora=false")
    rank = int(config.get("r", 0))
    if not 0 < rank <= max_rank:
        raise AdapterInvalid(f"LoRA rank {rank} is outside 1..{max_rank}")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    leaves = {n.rsplit(".", 1)[-1] for n in module_names}
    missing = [t for t in targets if t not in leaves and t != "all-linear"]
    if missing:
        raise AdapterInvalid(f"target modules {missing} do not exist in {model_id}")
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors
    try:
        tensors = load_safetensors(raw)
    except (SafetensorError, ValueError) as exc:
        raise AdapterInvalid(f"{folder / WEIGHTS} is not a readable safetensors file ({exc})") from None
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise AdapterInvalid(f"weight {name} has NaN or infinite values")
    return ValidAdapter(manifest, config, tensors)
