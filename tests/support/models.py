"""Small real models with known outputs, trained in seconds from the tiny random Llama.

A "parrot" answers every chat prompt greedily with one fixed reply: it lets a test know
what a real model will generate (an XSS string for the page, distinct outputs for
adapter versions) without a stub anywhere in the serving path."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

PROMPTS = ["hello", "Say something", "What is the capital of France?", "show me", "test", "hi there"]
SYSTEM = "You are a helpful assistant. Answer briefly and clearly."


def train_parrot(models_dir: Path, out_dir: Path, reply: str, steps: int = 150, seed: int = 0) -> Path:
    """Fine-tune all weights of the tiny model so it answers `reply` to any prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.modeling import ensure_tiny
    src = ensure_tiny(models_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src)
    rows = []
    for p in PROMPTS:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}]
        prompt = tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)["input_ids"]
        target = tok(reply, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
        rows.append((prompt, target))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        prompt, target = rows[step % len(rows)]
        ids = torch.tensor([prompt + target])                       # [1, P+T]
        labels = torch.tensor([[-100] * len(prompt) + target])      # loss on the reply only
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir


def train_parrot_adapter(models_dir: Path, reply: str, steps: int = 120, seed: int = 0, rank: int = 8):
    """A LoRA adapter (PeftModel) on the tiny model whose greedy answer is `reply`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.modeling import ensure_tiny
    src = ensure_tiny(models_dir)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(src)
    base = AutoModelForCausalLM.from_pretrained(src)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], lora_dropout=0.0))
    target = tok(reply, add_special_tokens=False)["input_ids"]
    rows = []
    for p in PROMPTS:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}]
        prompt = tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)["input_ids"]
        rows.append((prompt, target))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    for step in range(steps):
        prompt, tgt = rows[step % len(rows)]
        ids = torch.tensor([prompt + tgt])
        labels = torch.tensor([[-100] * len(prompt) + tgt])
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model


class _Saved:
    """A PEFT folder already on disk, staged like a model (save_pretrained copies it)."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def save_pretrained(self, dest: str) -> None:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(self.folder / name, Path(dest) / name)


def publish_adapter(redis_url: str, prefix: str, data_dir: Path, model, base_model: str, *, mode: str = "stable",
                    canary_share: float = 0.5, tamper=None) -> str:
    """Publish a PeftModel through the real registry (lock, stage, commit) as the learner does.
    `tamper(folder)` may damage the staged files first (corrupt/NaN adapters for refusal tests)."""
    import time as _time

    import redis as _redis

    from core.keys import Keys
    from core.manifest import AdapterManifest
    from core.registry import Registry
    from learner.runner import LearnerLock
    r = _redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    reg = Registry(r, keys, data_dir)
    lock = LearnerLock(r, keys, ttl_s=60)
    assert lock.acquire(), "learner lock busy"
    try:
        version = reg.state()["next_version"] + 1
        manifest = AdapterManifest(version=version, parent=reg.state()["stable"], base_model=base_model,
                                   state="published", created=_time.time())
        staged = reg.stage(_Saved(model) if isinstance(model, (str, Path)) else model, manifest)
        if tamper is not None:
            tamper(staged)
        manifest = reg.manifest_of(staged)
        ok, why = reg.commit(staged, manifest, lock.token, mode, canary_share, cursor=None, pairs_cursor=None, by="test")
        assert ok, why
        return str(version)
    finally:
        lock.release()
        r.close()


def save_random_adapter(models_dir: Path, folder: Path, seed: int, rank: int = 4) -> Path:
    """A LoRA adapter for tiny-random with random (non-zero) B weights: outputs differ per seed."""
    from peft import LoraConfig, get_peft_model

    from core.modeling import load_model
    torch.manual_seed(seed)
    model = get_peft_model(load_model("tiny-random", models_dir, "cpu").model,
                           LoraConfig(r=rank, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(str(folder))
    return folder
