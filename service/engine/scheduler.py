"""The local engine's scheduling rules, as pure functions of plain data: no model, no torch, no
thread (vLLM v1's split: the scheduler decides, the model runner executes). The engine
(core.py) asks `plan_round` what each round does and hands the forward passes to the runner
(runner.py); tests/service/engine/test_scheduler.py checks every rule here without a model.

One round, as the engine runs a `RoundPlan`:
1. the requests whose client cancelled end;
2. the inbox runs (new requests join the end of the line; engine calls such as adapter loads
   run here, between forward passes), then the oldest prompt not yet all in gets one chunk;
3. every sequence whose prompt is in samples one token (the one just prefilled too), in one
   batched call;
4. the inbox runs again, then the sampled tokens are fed back in one batched forward;
5. waiting clients hear their new place in the line.
Every decoding sequence advances one token per round, so streams interleave fairly and a
cancelled one frees its row at the next round; an adapter load waits for one forward pass,
never for a whole round. Prompts are prefilled first come, first served rather than all a chunk
each round: eight prompts arriving together then see their first tokens one after another
instead of all at the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from service.engine.events import FinishReason

BASE_NAMES = (None, "", "base")   # what a request may say for "no adapter"


class Schedulable(Protocol):
    """What the rules read of a sequence (service/engine/sequence.py)."""
    waiting: bool      # its prompt is not all in yet: it holds a place in the line
    position: int      # the place in the line its client was last told

    @property
    def cancelled(self) -> bool: ...

    @property
    def decoding(self) -> bool: ...   # its prompt is in: it has next-token logits to sample


S = TypeVar("S", bound=Schedulable)


@dataclass
class RoundPlan(Generic[S]):
    cancel: list[S] = field(default_factory=list)    # end these first: their clients cancelled
    prefill: S | None = None                         # the oldest sequence whose prompt is not all in
    rows: list[S] = field(default_factory=list)      # in line order: who samples a token this round
    # (`prefill` is among `rows`: it samples only if this chunk brings in the rest of its prompt)


def plan_round(seqs: list[S]) -> RoundPlan[S]:
    """Who ends, who gets a prefill chunk and who samples, for sequences in line order."""
    plan: RoundPlan[S] = RoundPlan()
    for seq in seqs:
        if seq.cancelled:
            plan.cancel.append(seq)
            continue
        if not seq.decoding:
            if plan.prefill is not None:
                continue   # its turn comes when the prompts before it are in
            plan.prefill = seq
        plan.rows.append(seq)
    return plan


def prefill_end(start: int, total: int, chunk: int) -> int:
    """Where the prefill forward starting at `start` ends: `chunk` tokens, or all the rest when
    at most a quarter chunk would be left. Every forward has a fixed cost (the weights are read
    once per pass): 155 new tokens of a turn as 128 + 27 paid it twice, now one pass of 155."""
    end = start + chunk
    return total if total - end <= chunk // 4 else end


def line_places(seqs: list[S]) -> list[tuple[S, int]]:
    """(sequence, its place) for each sequence still waiting for its prompt, in line order:
    0 is the one being prefilled, 1 the next, ..."""
    return [(seq, place) for place, seq in enumerate(s for s in seqs if s.waiting)]


def tell_place(told: int, place: int) -> bool:
    """Whether a waiting client hears its place: when it changed, and never place 0 (being
    prefilled: its first token follows)."""
    return place != 0 and place != told


def finish_after(token: int, n_tokens: int, stop_ids: set[int], max_new_tokens: int) -> FinishReason | None:
    """How a reply ends with the token just sampled (its `n_tokens`-th), or None if it goes on.
    A stop token ends it even at the length limit."""
    if token in stop_ids:
        return FinishReason.STOP
    if n_tokens >= max_new_tokens:
        return FinishReason.LENGTH
    return None


def keeps_prefix(reason: FinishReason) -> bool:
    """Whether a reply's KV is kept for the session's next turn: every end but an error (whose
    cache may be what failed)."""
    return reason is not FinishReason.ERROR


def admits(waiting: int, max_queue: int | None) -> bool:
    """Admission at submit: a bounded queue takes a request while fewer than `max_queue` wait
    for their first token."""
    return max_queue is None or waiting < max_queue


def retry_after(waiting: int, prefill_s: float, servers: int = 1) -> int:
    """Seconds until the queue has likely moved on: the prompts ahead at the mean time each takes
    to start (spread over `servers` that work in parallel), between 1 and 60."""
    return max(1, min(60, round(waiting * prefill_s / max(1, servers) + 0.5)))


@dataclass(frozen=True)
class ForwardWeights:
    """The weights one forward over some rows runs on."""
    versions: frozenset[str]   # the adapter versions among the rows (base is not one)
    mixed: bool                # base and versions, or several versions: PEFT's mixed-adapter batch

    @property
    def version(self) -> str | None:
        """The one version every row is on (None = base); only when not mixed."""
        return next(iter(self.versions), None)


def forward_weights(adapters: list[str | None]) -> ForwardWeights:
    """One version (or base) for all rows -> activate it for the forward; rows on several ->
    PEFT's mixed-adapter batch: each row gets its own version's LoRA delta, the base weights are
    read once, instead of one forward per version."""
    names = {None if a in BASE_NAMES else a for a in adapters}
    return ForwardWeights(frozenset(n for n in names if n is not None), mixed=len(names) > 1)
