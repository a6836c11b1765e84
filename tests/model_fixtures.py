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
    from learner.modeling import ensure_tiny
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
