"""Models built on the spot (random weights, no download) around the real SmolLM2 tokenizer.

- `tiny`: the tests' tiny Llama (2 layers, hidden 64): correctness checks, and everything in --quick.
- `smollm2-135m`: SmolLM2-135M-Instruct's own config (assets/), the model the service ships.
- `llama-1b`: a TinyLlama-1.1B-shaped Llama (22 layers, hidden 2048, GQA 32/4) on SmolLM2's vocabulary.

Random weights are enough for speed; correctness comes from the tiny model's checks against an
fp32 reference of the same weights. The tokenizer ships in assets/ (gzipped, 0.6 MB), so the
check needs nothing that is git-ignored; --tokenizer points at another folder.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch

ASSETS = Path(__file__).parent / "assets" / "smollm2-135m"
TOKENIZER_FILES = ("tokenizer_config.json", "chat_template.jinja")

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, tie_word_embeddings=True, max_position_embeddings=4096),
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, tie_word_embeddings=False, max_position_embeddings=4096),
}
PROMPT = "Explain in a few sentences why the sky is blue."
SYSTEM = "You are a helpful assistant. Answer briefly and clearly."


def load_tokenizer(folder: str | Path | None = None):
    """The SmolLM2 tokenizer: from `folder`, else from the gzipped copy in assets/."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="gpucheck-tok-"))
        with gzip.open(ASSETS / "tokenizer.json.gz", "rb") as src, open(folder / "tokenizer.json", "wb") as dst:
            shutil.copyfileobj(src, dst)
        for name in TOKENIZER_FILES:
            shutil.copy(ASSETS / name, folder / name)
    folder = Path(folder)
    if not (folder / "tokenizer.json").exists():
        raise FileNotFoundError(f"--tokenizer {folder}: no tokenizer.json there (give a folder holding SmolLM2's "
                                f"tokenizer.json, tokenizer_config.json and chat_template.jinja)")
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except (ValueError, OSError, KeyError):   # a transformers that does not know this tokenizer_config's class
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                      **{k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")})
        tok.chat_template = (folder / "chat_template.jinja").read_text()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def llama_config(name: str, tokenizer):
    from transformers import LlamaConfig
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if name == "smollm2-135m":
        raw = json.loads((ASSETS / "config.json").read_text())
        keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "vocab_size")
        cfg = LlamaConfig(**{k: raw[k] for k in keep}, rope_theta=raw.get("rope_parameters", {}).get(
            "rope_theta", raw.get("rope_theta", 10000.0)), **ids)
        return cfg
    if name not in SHAPES:
        raise ValueError(f"model {name!r} is not one of tiny, smollm2-135m, llama-1b")
    return LlamaConfig(vocab_size=len(tokenizer), **SHAPES[name], **ids)


def build_model(name: str, tokenizer, device: torch.device, dtype: torch.dtype, seed: int = 1234):
    """A random-weight Llama of that shape, made directly on `device` (no CPU init of 1B weights)."""
    from transformers import LlamaForCausalLM
    cfg = llama_config(name, tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model = model.to(dtype).eval()
    model.config.name_or_path = f"gpucheck/{name}"
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def chat_ids(tokenizer, text: str = PROMPT) -> list[int]:
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    prompt = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_random_adapter(model, folder: Path, seed: int, *, rank: int = 16, scale: float = 0.05,
                         targets: tuple[str, ...] = LORA_TARGETS, model_id: str = "") -> Path:
    """A PEFT LoRA folder for `model` (not touched) with random A and B, plus the manifest that
    core.adapter_format.validate_adapter checks. Only long-standing config keys, so any PEFT reads it."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            a = torch.randn(rank, mod.in_features, generator=gen) / mod.in_features ** 0.5   # [r, in]
            b = torch.randn(mod.out_features, rank, generator=gen) * scale                    # [out, r]
            tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
    if not tensors:   # e.g. a model PEFT has already wrapped: its targets are LoRA layers, not nn.Linear
        raise ValueError(f"no nn.Linear named {targets} in the model: write adapters before loading any")
    return write_adapter(folder, tensors, rank=rank, targets=targets, model_id=model_id)


def write_adapter(folder: Path, tensors: dict, *, rank: int, targets, model_id: str) -> Path:
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
              "lora_dropout": 0.0, "target_modules": sorted(targets), "bias": "none", "fan_in_fan_out": False,
              "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
              "modules_to_save": None, "base_model_name_or_path": None}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=1))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    digest = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps({"sha256": digest, "base_model": model_id}))
    return folder


def half_loaded(first: Path, second: Path, folder: Path, model_id: str) -> Path:
    """What a load torn between two versions would leave: the first half of the layers' LoRA
    weights from `second`, the rest still `first`'s (the hot-swap check's positive control)."""
    from safetensors.torch import load_file
    a, b = load_file(str(first / "adapter_model.safetensors")), load_file(str(second / "adapter_model.safetensors"))
    keys = sorted(a)
    mixed = {k: (b[k] if i < len(keys) // 2 else a[k]) for i, k in enumerate(keys)}
    cfg = json.loads((first / "adapter_config.json").read_text())
    return write_adapter(folder, mixed, rank=cfg["r"], targets=cfg["target_modules"], model_id=model_id)
