"""One request's state on the local engine's thread, from admission to its EndEvent."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from service.engine.detokenizer import IncrementalDetokenizer
from service.engine.events import GenerationHandle, GenerationRequest


@dataclass(eq=False)   # identity: the engine finds a sequence in its lists and batch by `is`
class Sequence:
    request: GenerationRequest
    handle: GenerationHandle
    queued_at: float
    generator: torch.Generator | None = None
    ids: list[int] = field(default_factory=list)
    cache: object = None
    next_logits: torch.Tensor | None = None
    prefilled: int = 0          # prompt tokens already in the cache
    detok: IncrementalDetokenizer | None = None   # the reply's text, streamed as its tokens come
    first_token_at: float | None = None
    ended: bool = False         # its EndEvent was sent: exactly one per request
    waiting: bool = True        # counted in Engine.waiting until its prompt is in
    position: int = 0           # last queue position told to the client
    prefill_started: float | None = None
    reused: int = 0             # prompt tokens taken from the prefix cache
    peak_rows: int = 1          # most rows of a decode forward it was in

    @property
    def cancelled(self) -> bool:
        """Its client asked to stop (any thread may set this; the next round ends it)."""
        return self.handle.cancelled.is_set()

    @property
    def decoding(self) -> bool:
        """Its prompt is in: it has next-token logits to sample."""
        return self.next_logits is not None

    @property
    def adapter(self) -> str:
        """Its adapter version as the engine counts references: "base" for the base model."""
        return self.request.adapter or "base"
