"""TRL's KTOTrainer as a baseline for bench/learning.py: the same logged samples the learner
trained on, the same LoRA shape and optimiser settings, a fresh adapter on the base model.

What is "the same data": before each learner run the bench snapshots the dataset that run will
build (learner.dataset.build_dataset, same cursor, same filters, same user-share cap, same
held-out split); after the run, the snapshot's training samples up to the run's last stream id
are the samples it trained on. KTO rows are those samples decoded to text (prompt = the
chat-templated prompt as served, completion = the reply), label = reward > 0; after TRL has
prepared them, its token ids are replaced by the logged ones (prompt ids as served, reply ids +
EOS when it did not stop by itself), so both trainers see the very same tokens. `token_match`
says how many rows TRL's own re-tokenization had got back exactly (decoding and re-encoding is
not always the identity).

Known differences, recorded in the JSON rather than hidden:
  * TRL ends every completion with the EOS token. A reply that stopped by itself already ends
    with it (the server logs the stop token with its log-prob) and keeps its ids; a reply cut at
    max_new_tokens gets an EOS it never had, which the learner does not train on.
  * KTO keeps its data order (sequential sampling pairs each row with a neighbour for the KL
    estimate); the learner shuffles. KTO trains once on everything; the learner trains one
    round at a time, each run continuing the previous adapter.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from core.sampling import SamplingParams
from learner.config import TrainConfig
from learner.dataset import Dataset, Sample


def stream_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def used_by_run(snapshot: Dataset, last_id: str | None) -> list[Sample]:
    """Training samples of the snapshot the run actually read (stream id <= its last id)."""
    if last_id is None:
        return []
    return [s for s in snapshot.train if stream_key(s.stream_id) <= stream_key(last_id)]


def dump_samples(path: Path, samples: list[Sample], round_index: int) -> None:
    """Append samples (one JSON object per line, with the learner round that trained on them)."""
    with open(path, "a") as fh:
        for s in samples:
            fh.write(json.dumps({"round": round_index, **dataclasses.asdict(s)}) + "\n")


def load_samples(path: Path) -> list[tuple[int, Sample]]:
    """(round, sample) pairs written by dump_samples, in file order."""
    out = []
    for line in Path(path).read_text().splitlines():
        d = json.loads(line)
        k = d.pop("round")
        d["params"] = SamplingParams(**d["params"])
        out.append((k, Sample(**d)))
    return out


def with_eos(reply_ids: list[int], eos_id: int) -> list[int]:
    """The completion ids TRL trains on: the reply, ending with one EOS."""
    return reply_ids if reply_ids and reply_ids[-1] == eos_id else reply_ids + [eos_id]


def kto_rows(samples: list[Sample], tok) -> list[dict]:
    """TRL's unpaired-preference format, standard (text) flavour (TRL appends the EOS itself)."""
    def text(ids):
        return tok.decode(ids[:-1] if ids and ids[-1] == tok.eos_token_id else ids, skip_special_tokens=False)
    return [{"prompt": tok.decode(s.prompt_ids, skip_special_tokens=False), "completion": text(s.reply_ids),
             "label": bool(s.reward > 0)} for s in samples]


def _token_match(trainer, samples: list[Sample], eos_id: int) -> dict:
    """Share of rows whose prompt / completion TRL tokenized back to the logged ids (+ its EOS)."""
    rows = list(zip(trainer.train_dataset, samples))
    prompt = sum(row["prompt_ids"] == s.prompt_ids for row, s in rows)
    completion = sum(row["completion_ids"] == with_eos(s.reply_ids, eos_id) for row, s in rows)
    return {"prompt": prompt / max(1, len(rows)), "completion": completion / max(1, len(rows))}


def use_logged_ids(trainer, samples: list[Sample], eos_id: int, batch_size: int) -> None:
    """Swap TRL's tokenization of the rows for the logged ids, KL completions rotated within each
    batch exactly as KTOTrainer._prepare_dataset does."""
    ds = trainer.train_dataset
    if len(ds) != len(samples):
        raise RuntimeError(f"TRL kept {len(ds)} of {len(samples)} rows (max_length too small?)")
    completions = [with_eos(s.reply_ids, eos_id) for s in samples]
    kl = []
    for i in range(0, len(completions), batch_size):
        chunk = completions[i:i + batch_size]
        kl += [chunk[-1]] + chunk[:-1]
    ds = ds.remove_columns([c for c in ("prompt_ids", "completion_ids", "KL_completion_ids") if c in ds.column_names])
    ds = ds.add_column("prompt_ids", [s.prompt_ids for s in samples]).add_column("completion_ids", completions)
    if trainer.calculate_KL:
        ds = ds.add_column("KL_completion_ids", kl)
    trainer.train_dataset = ds


def train_kto(model_name: str, models_dir: Path, samples: list[Sample], cfg: TrainConfig, out_dir: Path, *,
              progress: bool = False, epochs: int | None = None) -> dict:
    """Train a LoRA adapter with trl.KTOTrainer on `samples`; save it to out_dir; return stats.
    The learner's starting learning rate and mini-batch size; `epochs`: default as many as the
    learner would take for that many samples (learner/trust_region.schedule)."""
    import datasets
    import torch
    import trl
    from peft import LoraConfig
    from trl import KTOConfig, KTOTrainer

    from core.modeling import load_model
    from learner.trust_region import schedule
    t_wall = time.perf_counter()
    loaded = load_model(model_name, models_dir, device="cpu")
    tok = loaded.tokenizer
    rows = kto_rows(samples, tok)
    n_good = sum(r["label"] for r in rows)
    # no truncation, as in the learner (replies are already cut to max_reply_tokens); +1 for the EOS
    max_length = max(len(s.prompt_ids) + len(s.reply_ids) for s in samples) + 1
    args = KTOConfig(
        output_dir=str(out_dir / "trainer"), per_device_train_batch_size=cfg.minibatch_size,
        num_train_epochs=epochs or schedule(len(samples), cfg.minibatch_size, cfg.step)[0],
        learning_rate=cfg.step.lr, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip if cfg.grad_clip > 0 else 1e9, lr_scheduler_type="constant", warmup_steps=0,
        beta=cfg.kto.beta, max_length=max_length, seed=cfg.seed,
        disable_dropout=False,  # keep the LoRA dropout the learner trains with
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=not progress,
        dataloader_num_workers=0)
    lora = LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
    trainer = KTOTrainer(model=loaded.model, ref_model=None, args=args, processing_class=tok,
                         train_dataset=datasets.Dataset.from_list(rows), peft_config=lora)
    token_match = _token_match(trainer, samples, tok.eos_token_id)
    use_logged_ids(trainer, samples, tok.eos_token_id, args.per_device_train_batch_size)
    t0 = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - t0
    trainer.model.save_pretrained(str(out_dir / "adapter"))
    wall_s = time.perf_counter() - t_wall
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "trl": trl.__version__, "torch": torch.__version__, "adapter_dir": str(out_dir / "adapter"),
        "base_model": loaded.model_id, "samples": len(samples), "desirable": n_good,
        "undesirable": len(samples) - n_good, "steps": result.global_step, "train_s": train_s, "wall_s": wall_s,
        "train_s_per_sample": train_s / len(samples), "wall_s_per_sample": wall_s / len(samples),
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "token_match": token_match, "token_ids": "logged (prompt as served; reply, + EOS if it did not stop)",
        "kto_config": {"per_device_train_batch_size": args.per_device_train_batch_size,
                       "num_train_epochs": args.num_train_epochs, "learning_rate": args.learning_rate,
                       "weight_decay": args.weight_decay, "max_grad_norm": args.max_grad_norm,
                       "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", str(args.lr_scheduler_type)),
                       "beta": args.beta,
                       "max_length": args.max_length, "loss_type": args.loss_type,
                       "desirable_weight": args.desirable_weight, "undesirable_weight": args.undesirable_weight,
                       "disable_dropout": args.disable_dropout, "seed": args.seed},
        "lora": {"r": lora.r, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout,
                 "target_modules": sorted(lora.target_modules)},
    }


def publish(redis_url: str, prefix: str, data_dir: Path, adapter_dir: Path, base_model: str) -> str:
    """Put the KTO adapter through the real registry as the stable version (the server hot-swaps to it)."""
    from tests.support.models import publish_adapter
    return publish_adapter(redis_url, prefix, data_dir, Path(adapter_dir), base_model, mode="stable")
