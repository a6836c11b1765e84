"""The model on a developer's machine, outside any server: replay and evaluation run here.

It is the serving code itself: a local `Engine` (service/engine.py) with `AdapterSlots`
(service/adapters.py) generates step by step with `sample_token` and a
`torch.Generator("cpu").manual_seed(seed)` per reply, exactly as a server does, so a logged
reply regenerated with the version and seed that served it comes out token for token.
Adapter versions load from the registry folder (DATA_DIR/adapters/v{N}) with
PeftModel.from_pretrained on the base model, after the same checks a server makes.

Scoring (sequence log-prob of logged replies under a version) uses the learner's functions
(learner.train.collate / reply_logits / sampling_logprobs): the same temperature and top-p
processing as at sampling, the same treatment of tokens outside the nucleus, so `evaluate`
computes exactly what the learner's gate computes.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from core.sampling import SamplingParams
from core.versions import is_base
from service.devtools.sessions import normalize_version
from service.engine.core import EndEvent, Engine, GenerationRequest, TokenEvent

log = logging.getLogger(__name__)


class VersionUnavailable(RuntimeError):
    """The adapter version cannot be loaded here; the message says why and what to do."""


@dataclass
class Generated:
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str
    prefix_reused: int = 0   # prompt tokens whose KV came from the session's prefix cache
    peak_rows: int = 1       # most rows of a decode forward it was in


def resolve_version(version: str | None, registry_state: dict) -> str:
    """'stable' / 'canary' / 'base' / 'v3' / '3' -> 'base' or a version number string."""
    v = normalize_version(version or "stable")
    if v == "stable":
        return registry_state.get("stable") or "base"
    if v == "canary":
        if not registry_state.get("canary"):
            raise VersionUnavailable("there is no canary version now; see `rewardloop adapters list`")
        return registry_state["canary"]
    if is_base(v) or v.isdigit():
        return v
    raise VersionUnavailable(f"unknown adapter version {version!r}: use base, stable, canary or a number like 3 "
                             "(see `rewardloop adapters list`)")


class OfflineModel:
    def __init__(self, loaded, adapters_dir: Path):
        """loaded: learner.modeling.LoadedModel; adapters_dir: DATA_DIR/adapters."""
        from service.engine.slots import AdapterSlots
        self.loaded, self.dir = loaded, Path(adapters_dir)
        self.tok = loaded.tokenizer
        self.model_id = loaded.model_id
        # A prefix cache as a server has one: a replayed turn then reuses the KV of the turn
        # before it exactly where the server did (GenerationRequest.prefix_limit), so its
        # forward passes, and their float rounding, are the server's.
        self.engine = Engine(loaded.model, loaded.tokenizer, loaded.device, prefix_cache_bytes=256 << 20)
        self.slots = AdapterSlots(self.engine)
        self.engine.adapters = self.slots
        self._module_names = {n for n, _ in loaded.model.named_modules()}
        self.engine.start()

    @classmethod
    def load(cls, settings) -> OfflineModel:
        from core.modeling import load_model
        return cls(load_model(settings.model, settings.models_dir, settings.device),
                   Path(settings.data_dir) / "adapters")

    def close(self) -> None:
        self.engine.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- adapters ---------------------------------------------------------------------
    def ensure(self, version: str) -> None:
        """Load adapter `version` ('base' needs nothing), with the server's checks."""
        if is_base(version) or version in self.slots.loaded:
            return
        from core.adapter_format import AdapterInvalid, validate_adapter
        folder = self.dir / f"v{int(version)}"
        if not folder.exists():
            raise VersionUnavailable(f"version {version} has no folder at {folder}: set REWARDLOOP_DATA_DIR to the "
                                     "data directory the learner publishes into (see `rewardloop adapters list`)")
        try:
            valid = validate_adapter(folder, self.model_id, self._module_names)
        except AdapterInvalid as exc:
            raise VersionUnavailable(f"version {version} cannot be loaded: {exc}") from None
        self.engine.call(lambda: self.slots.load(version, folder, valid)).result()

    # --- generation (the server's own path) -------------------------------------------
    def generate(self, prompt_ids: list[int], params: SamplingParams, version: str,
                 session: str | None = None, prefix_limit: int | None = 0) -> Generated:
        """One reply, as a server generates it. `session`: keep its KV for the session's next
        turn; `prefix_limit`: reuse at most that many tokens of the session's cached KV (a
        replay passes what the server reused; 0, the default, prefills the whole prompt)."""
        self.ensure(version)
        request = GenerationRequest(list(prompt_ids), params, None if is_base(version) else version,
                                    cache_key=(session, version) if session else None, prefix_limit=prefix_limit)
        # A fresh event loop in a helper thread: the caller may already run one (a notebook,
        # Playwright's sync API in tests), and asyncio.run refuses to nest.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self._generate(request)).result()

    async def _generate(self, request: GenerationRequest) -> Generated:
        handle = self.engine.submit(request)
        ids, logps, end = [], [], None
        async for ev in handle:
            if isinstance(ev, TokenEvent):
                ids.append(ev.token_id)
                logps.append(ev.logprob)
            elif isinstance(ev, EndEvent):
                end = ev
        if end.finish_reason == "error":
            raise RuntimeError(f"generation failed: {end.error}")
        return Generated(ids, logps, self.tok.decode(ids, skip_special_tokens=True), end.finish_reason,
                         end.prefix_reused or 0, end.peak_rows or 1)

    # --- scoring (the learner gate's path) --------------------------------------------
    def seq_logps(self, items: list[tuple[list[int], list[int], SamplingParams]], version: str,
                  batch_size: int = 8) -> list[float]:
        """Sequence log-prob of each (prompt ids, reply ids, params) under `version`, with the
        sampling processing of its params; greedy replies give 0 (no probability to compare)."""
        self.ensure(version)
        todo = [i for i, (_, reply, _) in enumerate(items) if reply]  # an empty reply has log-prob 0
        scores = self.engine.call(lambda: self._score([items[i] for i in todo], version, batch_size)).result()
        out = [0.0] * len(items)
        for i, s in zip(todo, scores):
            out[i] = s
        return out

    def _score(self, items, version, batch_size) -> list[float]:  # engine thread
        from learner.dataset import Sample
        from learner.train import collate, reply_logits, sampling_logprobs
        self.engine.activate_adapter(None if is_base(version) else version)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(items), batch_size):
                chunk = [Sample(reply_id=str(j), user_id="", prompt_ids=list(p), reply_ids=list(t),
                                behavior_logp=[0.0] * len(t), reward=0.0, adapter_version=version, params=params)
                         for j, (p, t, params) in enumerate(items[i:i + batch_size])]
                batch = collate(chunk, pad, self.loaded.device)
                out += sampling_logprobs(reply_logits(self.engine.model, batch), batch).sum(-1).tolist()  # [B]
        return out
