"""A reply's `quality` field, written by the server with the reply and completed soon after
(the reward worker reads it when the reward becomes final):
  - the safety scorer's P[unsafe] (core/safety.py: alt-profanity-check by default, or the guard
    model REWARDLOOP_SAFETY_MODEL names), in a thread: about a tenth of a millisecond. Without it
    the reward's safety veto would fire only on a safety word or a user's `unsafe` tag, and
    upvoted abuse could train;
  - relevance and fluency under the base model (core/quality.py), computed where the model
    already is: on the local engine's thread between two decode rounds (Engine.call), with any
    adapter switched off, so no second copy of the model is loaded. Chat first: they are scored
    after the reply has ended (its end reaches the user without waiting), batched, when the engine
    has no stream in flight or after a few seconds at most (EngineScores), and stored into the
    saved reply's `quality`. The calibration (the model's own typical replies) is read from the
    models folder or computed there once, on the engine thread right after start (~10 s for
    SmolLM2 on 2 cores; a cache read after that). That stalls the engine, so /readyz says not
    ready until it is done (or failed). Until a reply's scores arrive, on the vLLM engine (its
    model lives on the vLLM servers) and after a failed calibration, the field says why in
    `absent` and the reward adds no relevance or fluency component. `rewardloop rewards score`
    computes all three with core/reply_scoring.py.
A scorer that fails costs the reply its scores, never the reply: it is logged and left out.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from core.quality import BaseScores, Calibration, load_or_calibrate, score_pairs
from core.reply_scoring import quality_fields
from core.safety import SafetyScorer, load_safety_scorer

log = logging.getLogger(__name__)

NOT_SCORED_HERE = "relevance and fluency: not scored by the server (rewardloop rewards score computes them)"
CALIBRATING = "relevance and fluency: the server is still calibrating the base model"
SCORING_LATER = "relevance and fluency: scored by the engine after the reply (this field is completed then)"


class EngineScores:
    """Relevance and fluency of replies under the local engine's base model, on the engine thread,
    after the reply has ended: chat first. A saved reply joins a queue; one task takes it when the
    engine has no stream in flight, or after DEFER_S at the latest (a busy server still scores
    every reply well inside the reward's wait window), together with up to BATCH others in one
    batched call, and completes the reply's stored `quality` field (ChatStore.set_quality).

    engine: service.engine.core.Engine (`call` runs a function between forward passes, `streams`
    counts requests in flight); cache_dir: where the calibration is kept (the models folder)."""

    DEFER_S = 5.0
    BATCH = 16

    def __init__(self, engine, tokenizer, model_id: str, cache_dir: Path):
        self.engine, self.tokenizer, self.model_id, self.cache_dir = engine, tokenizer, model_id, Path(cache_dir)
        self.calibration: Calibration | None = None
        self.why = CALIBRATING
        self.settled = False                    # calibrated, or failed: /readyz waits for it
        self.replies, self.calls, self.engine_s, self.failures = 0, 0, 0.0, 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

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

    def _on_engine(self, pairs: list[tuple[str, str]]) -> list[BaseScores | None]:
        t0 = time.perf_counter()
        out = score_pairs(self._base(), self.tokenizer, pairs, self.engine.device)
        self.replies += len(pairs)
        self.calls += 1
        self.engine_s += time.perf_counter() - t0
        return out

    @property
    def pending(self) -> str:
        """What a saved reply's `absent` says until its scores arrive (or why they never will)."""
        return SCORING_LATER if self.calibration is not None else self.why

    def later(self, prompt: str, text: str, quality: dict, save: Callable[[dict], Awaitable[object]]) -> None:
        """Queue a saved reply (event loop); `save(quality)` stores its completed quality mapping."""
        if self.calibration is None:
            return                  # its quality says why already
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="reply-quality")
        self._queue.put_nowait((time.monotonic(), prompt, text, quality, save))

    async def _drain(self) -> None:
        while True:
            items = [await self._queue.get()]
            try:
                while self.engine.streams and time.monotonic() - items[0][0] < self.DEFER_S:
                    await asyncio.sleep(0.05)
                while len(items) < self.BATCH and not self._queue.empty():
                    items.append(self._queue.get_nowait())
                pairs = [(prompt, text) for _, prompt, text, _, _ in items]
                scores = await asyncio.wrap_future(self.engine.call(lambda: self._on_engine(pairs)))
                for (_, _, _, quality, save), base in zip(items, scores):
                    await save(quality_fields(quality["unsafe"], quality["safety_scorer"], base, self.calibration))
            except Exception:   # one batch's scoring must not stop the next one, nor the server
                self.failures += len(items)
                log.exception("relevance and fluency scoring failed on %d replies; they keep their safety "
                              "score only", len(items))

    def stats(self) -> dict:
        return {"replies": self.replies, "calls": self.calls, "failures": self.failures,
                "engine_ms_per_reply": 1000 * self.engine_s / self.replies if self.replies else None,
                "queued": self._queue.qsize() if self._queue is not None else 0,
                "calibrated": self.calibration is not None, "settled": self.settled,
                **({} if self.calibration is not None or not self.settled else {"error": self.why})}


class ReplySafety:
    """Scores each finished reply; `quality()` is the mapping the reply record stores, and
    `after_save` queues its relevance and fluency (base: EngineScores; None: not scored here,
    `absent` says why)."""

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
        """{"unsafe": P, "safety_scorer": name, "absent": why relevance and fluency are not (yet)
        there}, or None when the scorer failed (logged; the reply is saved without scores)."""
        try:
            unsafe = (await asyncio.to_thread(self.scorer.unsafe_probability, [text], [prompt]))[0]
        except Exception:   # one reply's scoring must not fail the reply or stop the server
            self.failures += 1
            log.exception("safety scorer %s failed on a reply; saved without quality scores", self.scorer.name)
            return None
        why = self.absent if self.base is None else self.base.pending if text.strip() else ""  # "": empty reply
        return quality_fields(unsafe, self.scorer.name, None, None, why)

    def after_save(self, prompt: str, text: str, quality: dict | None, save: Callable[[dict], Awaitable[object]]) -> None:
        """The reply is saved: queue its relevance and fluency (if this server scores them)."""
        if self.base is not None and quality is not None and text.strip():
            self.base.later(prompt, text, quality, save)
