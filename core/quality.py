"""Relevance and fluency of a reply, read off the BASE model's log-probs (its adapter off).

    relevance (PMI)  mean over the reply's tokens of  log p(t | prompt) - log p(t | empty prompt)
                     nats per token: how much knowing the question makes the reply likelier.
                     An answer scores high; a fluent reply about something else scores ~0 or below.
    fluency          mean over the reply's tokens of  log p(t | empty prompt): how natural the
                     text reads, whatever it answers (so it does not count relevance twice).

Both are then normalised against the model's own typical replies (`Calibration`: the model's
sampled replies to CALIBRATION_PROMPTS, scored the same way): a z-score, 0 = as typical as the
model's own replies, higher is better. The raw figures travel with them.

"The prompt" is the user's last message, in the chat template, without the conversation before
it or the server's system prompt: what the reply is asked to be about, scored the same way by the
server, the learner and `rewardloop rewards score`. The reply is its text, tokenized again, cut to
MAX_REPLY_TOKENS. Computed where a base model is loaded anyway: the learner's gate (its safety
probe) and `rewardloop rewards score`. The server does not score these yet (its engine thread
owns the model): it writes only P[unsafe] (service/serving/quality.py), so live replies carry no
relevance or fluency component.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

log = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 256   # the question, in its template; longer ones keep their end
MAX_REPLY_TOKENS = 256
ROWS_PER_FORWARD = 8      # scoring rows per forward pass (each (prompt, reply) is two rows)
CALIBRATION_PROMPTS = (
    "What is the capital of France?", "How do I boil an egg?", "Give me a tip for sleeping better.",
    "What is photosynthesis?", "Write one sentence about the sea.", "How many legs does a spider have?",
    "What should I pack for a weekend trip?", "Explain what a noun is.", "Why do cats purr?",
    "Suggest a name for a pet fish.", "What is 12 times 3?", "How can I be more productive at work?",
    "What is the opposite of ancient?", "Tell me a fun fact about space.", "How do I say thank you in Spanish?",
    "What does a thermometer measure?",
)
CALIBRATION_SAMPLES = 2          # replies per calibration prompt
CALIBRATION_MAX_NEW_TOKENS = 48
CALIBRATION_VERSION = 1          # bump when the scoring or the calibration recipe changes


@dataclass(frozen=True)
class BaseScores:
    """Raw base-model figures of one reply (nats per token)."""
    pmi: float
    logprob: float
    n_tokens: int


@dataclass(frozen=True)
class Calibration:
    """Mean and spread of the raw figures over the model's own sampled replies."""
    model_id: str
    pmi_mean: float
    pmi_std: float
    logprob_mean: float
    logprob_std: float
    n: int
    version: int = CALIBRATION_VERSION

    def relevance(self, s: BaseScores) -> float:
        return (s.pmi - self.pmi_mean) / self.pmi_std

    def fluency(self, s: BaseScores) -> float:
        return (s.logprob - self.logprob_mean) / self.logprob_std

    def scores(self, s: BaseScores | None) -> dict:
        """The reply record's quality fields from raw figures (empty when there are none)."""
        if s is None:
            return {}
        return {"relevance": round(self.relevance(s), 4), "fluency": round(self.fluency(s), 4),
                "relevance_pmi": round(s.pmi, 4), "fluency_logprob": round(s.logprob, 4), "scored_tokens": s.n_tokens}


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The question in the chat template, ready for the assistant's turn (a long question keeps its
    last MAX_PROMPT_TOKENS tokens, so every prompt starts with the template's shared head)."""
    text_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(text_ids) > MAX_PROMPT_TOKENS:
        prompt = tokenizer.decode(text_ids[-MAX_PROMPT_TOKENS:])
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def reply_ids(tokenizer, reply: str) -> list[int]:
    return tokenizer(reply, add_special_tokens=False)["input_ids"][:MAX_REPLY_TOKENS]


def _common_prefix(rows: Sequence[list[int]]) -> int:
    n = min(map(len, rows))
    first = rows[0]
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return n


@torch.no_grad()
def token_logprobs(model, rows: Sequence[tuple[list[int], list[int]]], device, pad_id: int = 0) -> list[list[float]]:
    """log p(reply token | context, earlier reply tokens) for each (context ids, reply ids) row.

    Batched: rows sorted by length, ROWS_PER_FORWARD per pass, right-padded; the contexts' common
    head (the chat template's system part, the same in every row) is computed once per pass and
    its KV cache shared by the rows. Every context is non-empty."""
    from core.modeling import cache_argument_name
    cache_arg = cache_argument_name(model)
    out: list[list[float] | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    for start in range(0, len(order), ROWS_PER_FORWARD):
        idx = order[start:start + ROWS_PER_FORWARD]
        chunk = [rows[i] for i in idx]
        head = min(_common_prefix([c for c, _ in chunk]), min(len(c) for c, _ in chunk) - 1)  # >= 1 token each
        cache = None
        if head > 0:
            cache = getattr(model(input_ids=torch.tensor([chunk[0][0][:head]], device=device), use_cache=True),
                            cache_arg)
            cache.batch_repeat_interleave(len(chunk))
        tails = [c[head:] + r for c, r in chunk]
        width = max(map(len, tails))
        ids = torch.tensor([t + [pad_id] * (width - len(t)) for t in tails], device=device)            # [B, W]
        mask = torch.tensor([[1] * (head + len(t)) + [0] * (width - len(t)) for t in tails], device=device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=cache is not None,
                       **({cache_arg: cache} if cache is not None else {})).logits                    # [B, W, V]
        for row, i, (c, r) in zip(range(len(chunk)), idx, chunk):
            first = len(c) - head - 1           # the position that predicts reply token 0
            lp = torch.log_softmax(logits[row, first:first + len(r)].float(), -1)                   # [R, V]
            out[i] = lp.gather(-1, torch.tensor(r, device=lp.device)[:, None])[:, 0].tolist() if r else []
    return out


def score_pairs(model, tokenizer, pairs: Sequence[tuple[str, str]], device) -> list[BaseScores | None]:
    """Raw relevance and fluency of (prompt, reply) texts under `model` as it is (the caller
    switches any adapter off). None for an empty reply."""
    null = prompt_ids(tokenizer, "")
    rows: dict[tuple, int] = {}       # each distinct (context, reply) row once: a reply given to several
    index = []                        # prompts shares its empty-prompt row, a repeated line all of it

    def row(ctx: list[int], r: list[int]) -> int:
        return rows.setdefault((tuple(ctx), tuple(r)), len(rows))
    for prompt, reply in pairs:
        r = reply_ids(tokenizer, reply)
        index.append((row(prompt_ids(tokenizer, prompt), r), row(null, r)) if r else None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lps = token_logprobs(model, [(list(c), list(r)) for c, r in rows], device, pad) if rows else []
    out = []
    for i in index:
        if i is None:
            out.append(None)
            continue
        cond, uncond = lps[i[0]], lps[i[1]]
        n = len(cond)
        out.append(BaseScores(pmi=(sum(cond) - sum(uncond)) / n, logprob=sum(uncond) / n, n_tokens=n))
    return out


# --- calibration: the model's own typical replies ---------------------------------------------
@torch.no_grad()
def sample_replies(model, tokenizer, prompts: Sequence[str], device, n: int, max_new_tokens: int,
                   *, seed: int = 0) -> list[str]:
    """n sampled replies (temperature 0.7, top-p 0.9: the serving defaults) per prompt, batched."""
    from core.modeling import default_stop_ids
    batch = [prompt_ids(tokenizer, p) for p in prompts for _ in range(n)]
    width = max(map(len, batch))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch], device=device)
    mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch], device=device)
    torch.manual_seed(seed)
    gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, top_p=0.9,
                         max_new_tokens=max_new_tokens, pad_token_id=pad,
                         eos_token_id=sorted(default_stop_ids(tokenizer)))
    return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in gen]


def calibrate(model, tokenizer, device, model_id: str) -> Calibration:
    """Score the model's own sampled replies to CALIBRATION_PROMPTS (about 10 s for SmolLM2 on 2 cores)."""
    replies = sample_replies(model, tokenizer, CALIBRATION_PROMPTS, device, CALIBRATION_SAMPLES,
                             CALIBRATION_MAX_NEW_TOKENS)
    prompts = [p for p in CALIBRATION_PROMPTS for _ in range(CALIBRATION_SAMPLES)]
    scored = [s for s in score_pairs(model, tokenizer, list(zip(prompts, replies)), device) if s is not None]
    if len(scored) < 4:
        raise RuntimeError(f"calibration of {model_id}: only {len(scored)} non-empty replies out of {len(replies)}")

    def spread(xs: list[float]) -> float:  # never 0: a z-score divides by it
        return max(statistics.pstdev(xs), 0.05)
    pmi, lp = [s.pmi for s in scored], [s.logprob for s in scored]
    return Calibration(model_id, statistics.fmean(pmi), spread(pmi), statistics.fmean(lp), spread(lp), len(scored))


def calibration_path(cache_dir: Path, model_id: str) -> Path:
    key = hashlib.sha256(json.dumps([model_id, CALIBRATION_VERSION, CALIBRATION_PROMPTS]).encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() else "-" for c in model_id)[-60:]
    return Path(cache_dir) / "quality" / f"{slug}-{key}.json"


def load_or_calibrate(model, tokenizer, device, model_id: str, cache_dir: Path) -> Calibration:
    """The model's calibration from cache_dir (e.g. the models folder), computed and saved once."""
    path = calibration_path(cache_dir, model_id)
    try:
        cal = Calibration(**json.loads(path.read_text()))
        if cal.version == CALIBRATION_VERSION and all(map(math.isfinite, (cal.pmi_std, cal.logprob_std))):
            return cal
    except (FileNotFoundError, NotADirectoryError):
        pass
    except (OSError, ValueError, TypeError) as exc:
        log.warning("calibration at %s is unreadable (%s); computing it again", path, exc)
    log.info("calibrating relevance and fluency of %s on its own replies (once; cached in %s)", model_id, path)
    cal = calibrate(model, tokenizer, device, model_id)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(cal), f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:   # a read-only models folder (the container image): use it, compute it again next start
        log.warning("calibration of %s not cached at %s (%s): it is used now and computed again at the next start; "
                    "make the models folder writable to keep it", model_id, path, exc)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return cal
