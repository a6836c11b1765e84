"""The `quality` field of a reply record from its text: safety, relevance and fluency together.

One object (`ReplyScorer`) holds what scoring needs -- the base model with its calibration
(core/quality.py) and the safety scorer (core/safety.py) -- and turns (prompt, reply) texts into
the mapping the reply record stores (core/records.py ReplyRecord.quality) and the reward worker
reads (worker/rewards/quality.py QualityScores.from_mapping). Whoever scores a reply calls this,
so the server at a reply's end, the learner's gate and `rewardloop rewards score` write the same
keys from the same numbers.

    {"unsafe": P 0..1, "safety_scorer": name,
     "relevance": z, "fluency": z, "relevance_pmi": nats/token, "fluency_logprob": nats/token,
     "scored_tokens": n}                   or "absent": why there are no base-model scores
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from core.quality import BaseScores, Calibration, load_or_calibrate, score_pairs
from core.safety import SafetyScorer, load_safety_scorer

log = logging.getLogger(__name__)


@dataclass
class ScoringCost:
    """Seconds spent per scorer, and replies scored (what one reply costs, on this machine)."""
    replies: int = 0
    model_s: float = 0.0
    safety_s: float = 0.0
    load_s: dict = field(default_factory=dict)

    def per_reply_ms(self) -> dict:
        n = max(self.replies, 1)
        return {"base_model_ms": 1000 * self.model_s / n, "safety_ms": 1000 * self.safety_s / n}


def quality_fields(unsafe: float, scorer: str, base: BaseScores | None, calibration: Calibration | None,
                   absent: str = "") -> dict:
    """The `quality` mapping of one reply: its P[unsafe] and, with base-model figures and their
    calibration, relevance and fluency; else `absent` says why they are missing."""
    q = {"unsafe": round(unsafe, 4), "safety_scorer": scorer}
    if base is not None and calibration is not None:
        q.update(calibration.scores(base))
    else:
        q["absent"] = absent or "empty reply: nothing to score"
    return q


class ReplyScorer:
    """lm: a core.modeling.LoadedModel (its adapter off) or None (no relevance/fluency, say why in
    `absent`); safety: a SafetyScorer; calibration: the lm's, from load_or_calibrate."""

    def __init__(self, lm, safety: SafetyScorer, calibration: Calibration | None, absent: str = ""):
        if lm is not None and calibration is None:
            raise ValueError("a model needs its calibration (core.quality.load_or_calibrate)")
        self.lm, self.safety, self.calibration = lm, safety, calibration
        self.absent = absent or ("" if lm is not None else "no base model loaded")
        self.cost = ScoringCost()

    @classmethod
    def load(cls, *, model: str | None, models_dir: Path, device: str = "auto", safety_model: str | None = None
             ) -> ReplyScorer:
        """The base model `model` (None: safety only) and the safety scorer REWARDLOOP_SAFETY_MODEL names."""
        t0 = time.perf_counter()
        safety = load_safety_scorer(safety_model, device="cpu")
        safety.unsafe_probability(["warm up"])    # its one-off load is not a per-reply cost
        load_s = {"safety": time.perf_counter() - t0}
        if model is None:
            scorer = cls(None, safety, None, absent="relevance and fluency not asked for")
        else:
            from core.modeling import load_model
            t0 = time.perf_counter()
            lm = load_model(model, models_dir, device)
            load_s["model"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            cal = load_or_calibrate(lm.model, lm.tokenizer, lm.device, lm.model_id, models_dir)
            load_s["calibration"] = time.perf_counter() - t0
            scorer = cls(lm, safety, cal)
        scorer.cost.load_s = load_s
        return scorer

    @property
    def model_id(self) -> str:
        return self.lm.model_id if self.lm is not None else ""

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[dict]:
        """The reply record's `quality` mapping of each (prompt, reply), in order."""
        if not pairs:
            return []
        t0 = time.perf_counter()
        unsafe = self.safety.unsafe_probability([r for _, r in pairs], [p for p, _ in pairs])
        t1 = time.perf_counter()
        if self.lm is not None:
            base = score_pairs(self.lm.model, self.lm.tokenizer, pairs, self.lm.device)
        else:
            base = [None] * len(pairs)
        t2 = time.perf_counter()
        self.cost.replies += len(pairs)
        self.cost.safety_s += t1 - t0
        self.cost.model_s += t2 - t1
        return [quality_fields(p, self.safety.name, b, self.calibration, self.absent) for p, b in zip(unsafe, base)]
