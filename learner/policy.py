"""The model a learner run trains, with what every step needs beside it, in one object.

`Policy` holds the model (the base model, then the base model with the run's LoRA adapter), its
tokenizer, pad id, stop ids, device and dtype; training, the gate, the KL readings and on-policy
sampling take it instead of (model, pad_id, device, ...) one by one.

The base model is loaded once per process and kept (`Policy.load`): a learner worker runs many
runs, and reloading 135M+ parameters each time grew its resident memory run after run (glibc
keeps freed arenas). Each run wraps the cached base model in its LoRA adapter and `release()`
takes the adapter out again (PEFT's unload), so the next run starts from the same base weights.
"""
from __future__ import annotations

import ctypes
import gc
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_CACHE: dict[tuple, Policy] = {}
LOADS: Counter = Counter()   # (model, models_dir, device) -> times this process loaded its weights


@dataclass
class Policy:
    model: torch.nn.Module          # the base model; a PeftModel over it between wrap() and release()
    tokenizer: object
    model_id: str
    device: torch.device
    dtype: torch.dtype
    pad_id: int
    stop_ids: set[int] = field(default_factory=set)
    forwards: int = 0               # forward passes of the base model so far (count_forwards installs the counter)
    _counting: bool = field(default=False, repr=False)

    def count_forwards(self) -> None:
        """Count every forward pass of the base model (PEFT's forward runs it too) in `forwards`:
        what a run costs, for its manifest and the tests that bound it."""
        if not self._counting:   # the decoder: PEFT calls the causal LM's forward() directly, bypassing its hooks
            decoder = getattr(self.model, "model", self.model)
            decoder.register_forward_pre_hook(lambda module, args: self._forwarded())
            self._counting = True

    def _forwarded(self) -> None:
        self.forwards += 1

    @classmethod
    def load(cls, model: str, models_dir: Path, device: str = "auto") -> Policy:
        """The base model for (model, models_dir, device), loaded on first use and kept."""
        from core.modeling import default_stop_ids, load_model
        key = (model, str(models_dir), device)
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        loaded = load_model(model, models_dir, device)
        policy = cls(model=loaded.model, tokenizer=loaded.tokenizer, model_id=loaded.model_id, device=loaded.device,
                     dtype=loaded.dtype, pad_id=loaded.tokenizer.pad_token_id,
                     stop_ids=default_stop_ids(loaded.tokenizer))
        policy.count_forwards()
        LOADS[key] += 1
        _CACHE[key] = policy
        return policy

    @property
    def wrapped(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    def wrap(self, lora, seed: int, parent_dir: Path | None) -> None:
        """Give the model trainable LoRA weights: the parent adapter's, or a fresh one (`lora`:
        LoraSettings; the fresh init is seeded)."""
        from peft import LoraConfig, PeftModel, get_peft_model
        if self.wrapped:
            raise RuntimeError("Policy.wrap: the model already has an adapter; release() it first")
        torch.manual_seed(seed)  # fresh LoRA init (A random, B zero) is reproducible
        if parent_dir is not None:
            self.model = PeftModel.from_pretrained(self.model, str(parent_dir), is_trainable=True)
        else:
            cfg = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
            self.model = get_peft_model(self.model, cfg)
        self.model.eval()

    def release(self) -> None:
        """Take the run's adapter out (the base model is left as it was loaded) and give the
        freed memory back to the system."""
        if self.wrapped:
            self.model = self.model.unload()
            self.model.eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        trim_memory()


def forget(model: str, models_dir: Path, device: str = "auto") -> None:
    """Drop the cached base model (a run that failed half-way may have left it changed)."""
    _CACHE.pop((model, str(models_dir), device), None)
    trim_memory()


def trim_memory() -> None:
    """Collect garbage and ask glibc to return free heap pages to the system (malloc_trim):
    without it the freed tensors of one run stay in the process's arenas."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc (macOS, musl): nothing to trim
        pass
