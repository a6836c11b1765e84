"""A reply's `quality` field, written by the server as the reply ends (before the reward worker
reads the record): the safety scorer's P[unsafe] (core/safety.py: alt-profanity-check by
default, or the guard model REWARDLOOP_SAFETY_MODEL names). Without it the reward's safety veto
would fire only on a safety word or a user's `unsafe` tag, and upvoted abuse could train.

Relevance and fluency need the base model with the adapter off; the engine thread owns the model
and does not score yet, so the field says so in `absent` (the reward then adds no relevance or
fluency component; `rewardloop rewards score` computes all three with core/reply_scoring.py).
A scorer that fails costs the reply its scores, never the reply: it is logged and left out.
"""
from __future__ import annotations

import asyncio
import logging

from core.reply_scoring import ReplyScorer
from core.safety import SafetyScorer, load_safety_scorer

log = logging.getLogger(__name__)

NOT_SCORED_HERE = "relevance and fluency: not scored by the server (rewardloop rewards score computes them)"


class ReplySafety:
    """Scores each finished reply's text; `quality()` is the mapping the reply record stores."""

    def __init__(self, scorer: SafetyScorer):
        self.scorer = scorer
        self.failures = 0
        # core/reply_scoring.py builds the field, as for `rewards score` and the gate (no base model here)
        self._fields = ReplyScorer(None, scorer, None, absent=NOT_SCORED_HERE)

    @classmethod
    def load(cls, spec: str | None) -> ReplySafety:
        """REWARDLOOP_SAFETY_MODEL -> the scorer, warmed up so the first reply does not pay its load
        (a name that cannot score raises core.safety.SafetyScorerError, which says what to set)."""
        scorer = load_safety_scorer(spec, device="cpu")
        scorer.unsafe_probability(["warm up"])
        return cls(scorer)

    async def quality(self, prompt: str, text: str) -> dict | None:
        """{"unsafe": P, "safety_scorer": name, "absent": why no relevance/fluency}, or None when
        the scorer failed (logged; the reply is saved without scores)."""
        try:
            return (await asyncio.to_thread(self._fields.score, [(prompt, text)]))[0]
        except Exception:   # one reply's scoring must not fail the reply or stop the server
            self.failures += 1
            log.exception("safety scorer %s failed on a reply; saved without quality scores", self.scorer.name)
            return None
