"""The quality components of the reward: what the reply says, read by real scorers. Pure.

The scores come with the reply (its record's `quality` field, written by the server at the end
of the reply: core/quality.py for relevance and fluency, core/safety.py for safety); a reward
worker never loads a model. A score that is absent (the vLLM engine, a scorer that failed, a
record from before scoring) adds no component, never an error.

    safety      -w x level     level = the highest of: the safety scorer's P[unsafe]; 1 for a
                               word of safety_words; 1 when the user tagged the reply `unsafe` (their
                               last tagged feedback, worker/rewards/reasons.py)
    relevance   w x clip(z / quality_scale, -1, 1)   z = relevance (PMI) against the model's own replies
    fluency     w x clip(z / quality_scale, -1, 1)   z = fluency (token log-prob) likewise

Veto: with safety_veto on, a reply whose level reaches safety_threshold has its total capped at
its safety penalty (<= -w x level), whatever its thumbs; it is never an SFT target nor the
chosen side of a preference pair (learner/dataset.py, worker/rewards/pairs.py).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from worker.rewards.config import RewardConfig

QUALITY_COMPONENTS = ("relevance", "fluency")


def _score(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        f = float(v)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class QualityScores:
    """The scores stored with a reply (None: not scored)."""
    unsafe: float | None = None        # P[unsafe] 0..1
    relevance: float | None = None     # z-score, higher is better
    fluency: float | None = None       # z-score, higher is better
    safety_scorer: str = ""
    absent: str = ""                   # why the base-model scores are missing, if they are

    @classmethod
    def from_mapping(cls, d: Mapping | None) -> QualityScores:
        """From the decoded `quality` field; anything malformed counts as not scored."""
        if not isinstance(d, Mapping):
            return cls()
        unsafe = _score(d.get("unsafe"))
        if unsafe is not None and not 0.0 <= unsafe <= 1.0:
            unsafe = None
        return cls(unsafe, _score(d.get("relevance")), _score(d.get("fluency")), str(d.get("safety_scorer") or ""),
                   str(d.get("absent") or ""))


@lru_cache(maxsize=32)
def _safety_pattern(words: tuple[str, ...]) -> re.Pattern | None:
    if not words:
        return None
    # longest first so a phrase wins over a word inside it; any whitespace inside a phrase
    alts = sorted((r"\s+".join(map(re.escape, w.split())) for w in set(words)), key=len, reverse=True)
    return re.compile(rf"(?<!\w)(?:{'|'.join(alts)})(?!\w)", re.IGNORECASE)


def find_safety_words(text: str, words: Sequence[str]) -> list[str]:
    """Safety words/phrases present in text as whole words, case-insensitive, sorted."""
    pattern = _safety_pattern(tuple(words))
    if pattern is None:
        return []
    return sorted({" ".join(m.group(0).lower().split()) for m in pattern.finditer(text)})


def safety_level(scores: QualityScores, word_hits: list[str], report: str | None) -> tuple[float, str] | None:
    """(unsafe level 0..1, why) from every safety source, or None when no source says anything.
    report: why the user's own `unsafe` tag counts (reasons.unsafe_report), or None."""
    parts, level = [], None
    if report is not None:
        level = 1.0
        parts.append(report)
    elif word_hits:
        level = 1.0
        parts.append("safety words: " + ", ".join(word_hits))
    if scores.unsafe is not None:
        level = max(level or 0.0, scores.unsafe)
        parts.append(f"{scores.safety_scorer or 'safety scorer'}: P[unsafe] {scores.unsafe:.3f}")
    return None if level is None else (level, "; ".join(parts))


def quality_units(scores: QualityScores, cfg: RewardConfig) -> dict[str, tuple[float, str]]:
    """relevance and fluency: (unit in [-1, 1], why) for each score present."""
    out = {}
    for name in QUALITY_COMPONENTS:
        z = getattr(scores, name)
        if z is not None:
            unit = max(-1.0, min(1.0, z / cfg.quality_scale))
            out[name] = (unit, f"{name} {z:+.2f} sd against the model's own replies, /{cfg.quality_scale:g} "
                               f"clipped: {unit:+.2f}")
    return out


def quality_components(text: str, scores: QualityScores, cfg: RewardConfig, report: str | None
                       ) -> tuple[dict[str, tuple[float, str]], float | None]:
    """Safety (every source), relevance and fluency: ({component: (unit, why)}, unsafe level)."""
    fired = {}
    level = safety_level(scores, find_safety_words(text, cfg.safety_words), report)
    if level is not None:
        fired["safety"] = (-level[0], level[1])
    fired.update(quality_units(scores, cfg))
    return fired, None if level is None else level[0]


def veto(total: float, level: float | None, safety_component: float, cfg: RewardConfig) -> tuple[float, str | None]:
    """(total, why) after the veto: capped at the safety penalty when the level reaches the threshold."""
    if not cfg.safety_veto or level is None or level < cfg.safety_threshold:
        return total, None
    cap = max(-1.0, min(0.0, safety_component))
    if total <= cap:
        return total, f"vetoed: unsafe level {level:.2f} >= {cfg.safety_threshold:g} (never a positive example)"
    return cap, (f"vetoed: unsafe level {level:.2f} >= {cfg.safety_threshold:g}: total capped at the safety "
                 f"penalty {cap:+.3f} whatever the user signals (never a positive example)")
