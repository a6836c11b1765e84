"""Safety scorers: the probability that a reply is unsafe (offensive, abusive, harmful), 0..1.

One small interface, `SafetyScorer.unsafe_probability(texts, prompts=None) -> list[float]`, and
three implementations, chosen by REWARDLOOP_SAFETY_MODEL (`load_safety_scorer`):

    ""  (default)   `alt-profanity-check`: a linear SVM on word n-grams trained on offensive
                    language, shipped inside its wheel (no download, no torch; ~0.05 ms a reply).
                    It reads insults, slurs and profanity; it does not understand harmful help
                    that is worded politely (a guard model does).
    a folder        a local transformers model, by its config:
                    - a sequence classifier (`*ForSequenceClassification`): P[the unsafe label],
                      the label whose name says unsafe/toxic/offensive/harmful (else label 1);
                    - a causal guard (Llama Guard style): the chat template of its moderation
                      prompt over (prompt, reply), then P["unsafe"] / (P["safe"] + P["unsafe"]) of
                      the two verdicts as continuations.

The server scores every reply at its end (service/serving/quality.py), the learner's gate every
probe reply (learner/probe_run.py), `rewardloop rewards score` any text. A reward worker never
loads one: it reads the score from the reply record. Torch and transformers are imported only by
the model-backed scorers.
"""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Protocol, Sequence

UNSAFE_WORDS = ("unsafe", "toxic", "offensive", "harmful", "hate", "abusive", "profan", "insult", "obscene")


class SafetyScorerError(ValueError):
    """REWARDLOOP_SAFETY_MODEL names something that cannot score safety; the message says why."""


class SafetyScorer(Protocol):
    name: str

    def unsafe_probability(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        """P[unsafe] of each reply text (0..1); `prompts`, when given, are what each reply answers."""
        ...


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, float(x))) if math.isfinite(x) else 1.0   # a broken score is not a safe one


class ProfanityScorer:
    """The default: alt-profanity-check's bundled model (scikit-learn + joblib, loaded on first use)."""
    name = "alt-profanity-check"

    def __init__(self):
        self._lock = threading.Lock()
        self._predict = None

    def _model(self):
        with self._lock:
            if self._predict is None:
                try:
                    from profanity_check import predict_prob
                except ImportError as exc:
                    raise SafetyScorerError(f"the default safety scorer needs alt-profanity-check ({exc}): "
                                            "pip install alt-profanity-check (a dependency of rewardloop)") from None
                self._predict = predict_prob
            return self._predict

    def unsafe_probability(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        texts = [t if isinstance(t, str) else "" for t in texts]
        if not texts:
            return []
        return [0.0 if not t.strip() else _clip01(p) for t, p in zip(texts, self._model()(texts))]


def _unsafe_label(id2label: dict) -> int:
    """Index of the label that means unsafe: by name, else 1 (binary classifiers' positive class)."""
    for i, name in sorted((int(k), str(v).lower()) for k, v in id2label.items()):
        if any(w in name for w in UNSAFE_WORDS) and not name.startswith(("non", "not", "safe")):
            return i
    if len(id2label) == 2:
        return 1
    raise SafetyScorerError(f"cannot tell which of the labels {sorted(id2label.values())} means unsafe: name one "
                            f"of them with a word among {', '.join(UNSAFE_WORDS)} in the model's config.json id2label")


class ClassifierScorer:
    """A local transformers sequence classifier."""

    def __init__(self, folder: Path, device: str = "cpu", batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        self.name = f"classifier:{Path(folder).name}"
        self.tok = AutoTokenizer.from_pretrained(folder)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).to(device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tok.pad_token_id
        self.label = _unsafe_label(self.model.config.id2label)
        self.device, self.batch_size = device, batch_size
        self._lock = threading.Lock()   # one caller at a time on the model

    def unsafe_probability(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        import torch
        out: list[float] = []
        with self._lock, torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tok(list(texts[i:i + self.batch_size]), return_tensors="pt", padding=True, truncation=True,
                               max_length=512).to(self.device)
                probs = torch.softmax(self.model(**enc).logits.float(), -1)[:, self.label]     # [B]
                out += [_clip01(p) for p in probs.tolist()]
        return out


class CausalGuardScorer:
    """A causal guard model (Llama Guard style): P[it would answer "unsafe" rather than "safe"]."""

    def __init__(self, folder: Path, device: str = "cpu", safe: str = "safe", unsafe: str = "unsafe"):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.name = f"guard:{Path(folder).name}"
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
        self.device = device
        self.verdicts = [self.tok(v, add_special_tokens=False)["input_ids"] for v in (safe, unsafe)]
        self._lock = threading.Lock()

    def guard_prompt(self, prompt: str, reply: str) -> list[int]:
        """The guard's own moderation prompt over the exchange (its chat template), ready for its verdict."""
        msgs = [{"role": "user", "content": prompt or "(no prompt)"}, {"role": "assistant", "content": reply}]
        ids = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)

    def unsafe_probability(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        from core.quality import token_logprobs
        prompts = list(prompts) if prompts is not None else [""] * len(texts)
        rows = []
        for prompt, text in zip(prompts, texts):
            ctx = self.guard_prompt(prompt, text)
            rows += [(ctx, self.verdicts[0]), (ctx, self.verdicts[1])]
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        with self._lock:
            lps = token_logprobs(self.model, rows, self.device, pad)
        out = []
        for i in range(0, len(lps), 2):
            safe, unsafe = sum(lps[i]), sum(lps[i + 1])
            top = max(safe, unsafe)
            out.append(_clip01(math.exp(unsafe - top) / (math.exp(safe - top) + math.exp(unsafe - top))))
        return out


def load_safety_scorer(spec: str | None, device: str = "cpu") -> SafetyScorer:
    """REWARDLOOP_SAFETY_MODEL -> a scorer: '' the default, else a local model folder."""
    if not spec or spec in ("default", "profanity-check", "alt-profanity-check"):
        return ProfanityScorer()
    folder = Path(spec)
    config = folder / "config.json"
    if not config.exists():
        raise SafetyScorerError(f"REWARDLOOP_SAFETY_MODEL={spec!r} is not a model folder (no config.json there); "
                                "unset it for the default offline classifier")
    archs = json.loads(config.read_text()).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return ClassifierScorer(folder, device)
    if any(a.endswith("ForCausalLM") or a.endswith("ForConditionalGeneration") for a in archs):
        return CausalGuardScorer(folder, device)
    raise SafetyScorerError(f"REWARDLOOP_SAFETY_MODEL={spec!r}: architectures {archs} are neither a sequence "
                            "classifier nor a causal LM guard")
