"""A reply's `quality` field, written by the server as the reply ends (before the reward worker
reads the record):
  - the safety scorer's P[unsafe] (core/safety.py: alt-profanity-check by default, or the guard
    model REWARDLOOP_SAFETY_MODEL names), in a thread: about a tenth of a millisecond. Without it
    the reward's safety veto would fire only on a safety word or a user's `unsafe` tag, and
    upvoted abuse could train;
  - relevance and fluency under the base model (core/quality.py), computed where the model
    already is: on the local engine's thread between two decode rounds (Engine.call), with any
    adapter switched off, so no second copy of the model is loaded. The calibration (the model's
    own typical replies) is read from the models folder or computed there once, on the engine
    thread right after start (~10 s for SmolLM2 on 2 cores; a cache read after that). That
    stalls the engine, so /readyz says not ready until it is done (or failed). On the vLLM
    engine (its model lives on the vLLM servers) and after a failed calibration, the field says
    why in `absent` and the reward adds no relevance or fluency component. `rewardloop rewards score` computes all three with core/reply_scoring.py.
A scorer that fails costs the reply its scores, never the reply: it is logged and left out.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from core.quality import BaseScores, Calibration, load_or_calibrate, score_pairs
from core.reply_scoring import quality_fields
from core.safety import SafetyScorer, load_safety_scorer

log = logging.getLogger(__name__)

NOT_SCORED_HERE = "relevance and fluency: not scored by the server (rewardloop rewards score computes them)"
CALIBRATING = "relevance and fluency: the server is still calibrating the base model"


class EngineScores:
    """Relevance and fluency of a reply under the local engine's base model, on the engine thread.

    engine: service.engine.core.Engine (its `call` runs a function between forward passes);
    cache_dir: where the calibration is kept (the models folder)."""

    def __init__(self, engine, tokenizer, model_id: str, cache_dir: Path):
        self.engine, self.tokenizer, self.model_id, self.cache_dir = engine, tokenizer, model_id, Path(cache_dir)
        self.calibration: Calibration | None = None
        self.why = CALIBRATING
        self.settled = False                    # calibrated, or failed: /readyz waits for it
        self.replies, self.engine_s = 0, 0.0    # what scoring has cost the engine thread

    def start(self) -> None:
        """Calibrate on the engine thread (a cache read after the first start)."""
        self.engine.call(self._calibrate).add_done_callback(self._calibrated)

    def _base(self):
        """The engine's model with the base weights active. The engine's own switch (not PEFT's
        disable_adapter context, which would re-enable layers the engine had turned off): the
        next decode round activates whatever its rows need."""
        self.engine.activate_adapter(None)
        return self.engine.model

    def _calibrate(self) -> Calibration:
        return load_or_calibrate(self._base(), self.tokenizer, self.engine.device, self.model_id, self.cache_dir)

    def _calibrated(self, fut) -> None:
        try:
            self.calibration = fut.result()
            log.info("replies are scored for relevance and fluency under %s (calibrated on %d of its replies)",
                     self.model_id, self.calibration.n)
        except Exception as exc:   # scoring is lost, never the server
            self.why = f"relevance and fluency: calibration failed ({type(exc).__name__}: {exc})"
            log.error("relevance and fluency will not be scored: calibrating %s failed: %s", self.model_id, exc)
        finally:
            self.settled = True

    def _on_engine(self, prompt: str, text: str) -> BaseScores | None:
        t0 = time.perf_counter()
        out = score_pairs(self._base(), self.tokenizer, [(prompt, text)], self.engine.device)[0]
        self.replies += 1
        self.engine_s += time.perf_counter() - t0
        return out

    async def score(self, prompt: str, text: str) -> tuple[BaseScores | None, Calibration | None, str]:
        """(figures, calibration, why absent); never raises."""
        if self.calibration is None:
            return None, None, self.why
        try:
            base = await asyncio.wrap_future(self.engine.call(lambda: self._on_engine(prompt, text)))
        except Exception as exc:   # one reply's scoring must not fail the reply or stop the server
            log.exception("relevance and fluency scoring failed on a reply; saved without them")
            return None, None, f"relevance and fluency: scoring failed ({type(exc).__name__})"
        return base, self.calibration, ""

    def stats(self) -> dict:
        return {"replies": self.replies, "engine_ms_per_reply": 1000 * self.engine_s / self.replies
                if self.replies else None, "calibrated": self.calibration is not None, "settled": self.settled,
                **({} if self.calibration is not None or not self.settled else {"error": self.why})}


class ReplySafety:
    """Scores each finished reply; `quality()` is the mapping the reply record stores.
    base: EngineScores for relevance and fluency (None: not scored here; `absent` says why)."""

    def __init__(self, scorer: SafetyScorer, base: EngineScores | None = None, absent: str = NOT_SCORED_HERE):
        self.scorer, self.base, self.absent = scorer, base, absent
        self.failures = 0

    @classmethod
    def load(cls, spec: str | None, base: EngineScores | None = None, absent: str = NOT_SCORED_HERE) -> ReplySafety:
        """REWARDLOOP_SAFETY_MODEL -> the scorer, warmed up so the first reply does not pay its load
        (a name that cannot score raises core.safety.SafetyScorerError, which says what to set)."""
        scorer = load_safety_scorer(spec, device="cpu")
        scorer.unsafe_probability(["warm up"])
        return cls(scorer, base, absent)

    async def quality(self, prompt: str, text: str) -> dict | None:
        """{"unsafe": P, "safety_scorer": name, then "relevance", "fluency", ... or "absent": why},
        or None when the safety scorer failed (logged; the reply is saved without scores)."""
        try:
            unsafe = (await asyncio.to_thread(self.scorer.unsafe_probability, [text], [prompt]))[0]
        except Exception:   # one reply's scoring must not fail the reply or stop the server
            self.failures += 1
            log.exception("safety scorer %s failed on a reply; saved without quality scores", self.scorer.name)
            return None
        base, calibration, why = (None, None, self.absent) if self.base is None else await self.base.score(prompt, text)
        if base is None and calibration is not None:
            why = "empty reply: nothing to score"
        return quality_fields(unsafe, self.scorer.name, base, calibration, why)
