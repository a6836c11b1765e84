"""Serving-time reranking (REWARDLOOP_RERANK_N > 1): sample N candidates of one turn at once,
score each with the learned reward model, stream the best.

The reward model (learner/reward_model.py) is the learner's: logistic heads on the frozen base
model's last hidden state, saved in DATA_DIR/reward_model. The server reads it from there,
again whenever the learner writes a newer one, and scores on the engine thread between decode
steps with the adapter switched off (the features are the base model's, as in training).

What it costs and changes:
- The first token waits for every candidate to end and one scoring forward (the N decode in
  one batch; each has its own prefill).
- Candidate i samples with seed + i, so the logged reply carries the seed that made it and
  `replay` regenerates it. Its logged log-probs are the sampled tokens' own, not the
  propensity of being chosen among N: the learner keeps reranked replies out of the gate's
  counterfactual estimate (learner/dataset.py).
- No reward model yet, one the learner did not trust (held-out AUROC below
  TrainConfig.reward_model.min_auroc, written in its manifest), or one trained for another base
  model: one candidate, as with N = 1.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

from core.sampling import MAX_SEED
from service.engine.events import EndEvent, GenerationRequest, QueuedEvent, TokenEvent

log = logging.getLogger(__name__)


class RewardScorer:
    """The newest reward model in DATA_DIR, read again when its manifest changes."""

    def __init__(self, engine, data_dir: Path, model_id: str):
        self.engine, self.dir, self.model_id = engine, Path(data_dir), model_id
        self._model = None
        self._stamp: tuple | None = None
        self.refused: str | None = None   # why the model on disk is not used (None: used, or none there)

    def current(self):
        """The reward model to score with, or None."""
        from learner.reward_model import FOLDER, RewardModel
        manifest = self.dir / FOLDER / "manifest.json"
        try:
            st = manifest.stat()
            stamp = (st.st_mtime_ns, st.st_ino)   # the learner writes a new folder: a new inode
        except OSError:
            self._model, self._stamp = None, None
            return None
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                model = RewardModel.load(self.dir)
            except Exception as exc:   # half-written or corrupt: keep serving, say why
                log.warning("reward model at %s cannot be read (%s); reranking is off until the learner "
                            "writes a good one", manifest.parent, exc)
                self._model, self.refused = None, f"unreadable: {exc}"
                return None
            if model is not None and model.metrics.get("trusted") is not True:
                log.warning("reward model at %s did not pass the learner's held-out AUROC floor: reranking is off",
                            manifest.parent)
                self._model, self.refused = None, "not trusted: held-out AUROC below the learner's floor"
                return None
            if model is not None and model.base_model and model.base_model != self.model_id:
                log.warning("reward model at %s was trained on %s, this server serves %s: reranking is off",
                            manifest.parent, model.base_model, self.model_id)
                self._model, self.refused = None, f"trained on {model.base_model}"
                return None
            self._model, self.refused = model, None
            log.info("reranking with the reward model at %s", manifest.parent)
        return self._model

    async def score(self, model, prompt_ids: list[int], replies: list[list[int]]) -> list[float]:
        """P[liked] of each (prompt, reply), computed on the engine thread."""
        from learner.reward_model import extract_features
        eng = self.engine

        def features():   # engine thread
            # The engine's own switch to base weights rather than PEFT's disable_adapter(): the
            # slots set the LoRA layers' state themselves (service/engine/slots.py), and the
            # engine's record of the active version then stays true by construction.
            eng.activate_adapter(None)
            base = eng.model.get_base_model() if hasattr(eng.model, "get_base_model") else eng.model
            return extract_features(base, [(prompt_ids, r) for r in replies], eng.device)
        feats = await asyncio.wrap_future(eng.call(features))
        return [float(p) for p in model.predict(feats)]


class RerankHandle:
    """What ChatService holds instead of one GenerationHandle: `cancel` cancels every candidate;
    iterating yields the first candidate's QueuedEvents, then, once all have ended, the chosen
    candidate's token events and its EndEvent. `on_end` fires when the last candidate ends,
    whether or not anyone iterates."""

    def __init__(self, handles, requests: list[GenerationRequest], scorer: RewardScorer, model):
        self.handles, self.requests, self.scorer, self.model = handles, requests, scorer, model
        self.on_end = None
        self.chosen: int | None = None
        self.scores: list[float] | None = None
        self._left = len(handles)
        for h in handles:
            h.on_end = self._one_ended

    @property
    def cancelled(self):
        return self.handles[0].cancelled

    @property
    def params(self):
        """The chosen candidate's sampling params (its seed), once chosen."""
        return self.requests[self.chosen or 0].params

    def summary(self) -> dict:
        """For the reply record."""
        return {"n": len(self.handles), "chosen": self.chosen, "scores": self.scores,
                "seeds": [r.params.seed for r in self.requests]}

    def cancel(self) -> None:
        for h in self.handles:
            h.cancel()

    def _one_ended(self) -> None:
        self._left -= 1
        if self._left == 0 and self.on_end is not None:
            self.on_end()

    async def _collect(self, i: int, first: bool, queued: asyncio.Queue) -> list:
        events = []
        async for ev in self.handles[i]:
            if isinstance(ev, QueuedEvent):
                if first:
                    queued.put_nowait(ev)
                continue
            events.append(ev)
        return events

    def __aiter__(self):
        return self._events()

    async def _events(self):
        queued: asyncio.Queue = asyncio.Queue()
        gathered = asyncio.gather(*(self._collect(i, i == 0, queued) for i in range(len(self.handles))))
        while not gathered.done():   # pass on the first candidate's queue positions meanwhile
            waiter = asyncio.ensure_future(queued.get())
            try:
                await asyncio.wait([waiter, gathered], return_when=asyncio.FIRST_COMPLETED)
            finally:   # also when the reader stops iterating here: leave no task pending
                got = waiter.done() and not waiter.cancelled()
                if not waiter.done():
                    waiter.cancel()
            if got:
                yield waiter.result()
        runs = gathered.result()
        ends = [next((e for e in r if isinstance(e, EndEvent)), None) for r in runs]
        ok = [i for i, e in enumerate(ends) if e is not None and e.finish_reason in ("stop", "length")]
        self.chosen = ok[0] if ok else 0
        if len(ok) > 1:
            try:
                replies = [[e.token_id for e in runs[i] if isinstance(e, TokenEvent)] for i in ok]
                self.scores = [None] * len(runs)
                for i, s in zip(ok, await self.scorer.score(self.model, self.requests[0].prompt_ids, replies)):
                    self.scores[i] = s
                self.chosen = max(ok, key=lambda i: self.scores[i])
            except Exception:   # scoring is an improvement, never what fails a reply
                log.exception("scoring %d candidates failed; serving the first", len(ok))
                self.scores = None
        shown = time.time()     # the user sees the reply from now on: that is its first token
        for ev in runs[self.chosen]:
            if isinstance(ev, EndEvent):
                ev = dataclasses.replace(ev, first_token_at=shown if ev.n_tokens else None)
            yield ev


def candidate_requests(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    """N copies with seeds seed, seed + 1, ...; only the first reuses the session's KV prefix
    (the cache holds one entry per session)."""
    out = [request]
    for i in range(1, n):
        params = dataclasses.replace(request.params, seed=(request.params.seed + i) % (MAX_SEED + 1))
        out.append(dataclasses.replace(request, params=params, cache_key=None))
    return out
