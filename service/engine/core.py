"""The generation engine: one thread owns the model.

The asyncio side only submits requests and receives events; every model call,
and later every adapter load, happens on this thread between decode steps, so
there is no model call on the event loop and no global `set_adapter` race.

Scheduling is per round: each active sequence advances one token per round, so
streams interleave fairly and a cancelled one frees its slot at the next step. Prompts
are prefilled one at a time, in chunks of at most `prefill_chunk` tokens per round; a
prefilled sequence's cache then moves into the `DecodeBatch`, and the tokens of a round
are fed back in one forward pass (`batching.py`), rows on different adapter versions
included (PEFT's mixed-adapter batch).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from core.sampling import SamplingParams, sample_token
from service.engine.batching import DecodeBatch, batchable

log = logging.getLogger(__name__)


@dataclass
class TokenEvent:
    token_id: int
    logprob: float
    text: str          # new text since the previous event ('' while a multi-byte char is incomplete)


@dataclass
class EndEvent:
    finish_reason: str  # stop | length | cancelled | error
    n_tokens: int
    queued_at: float
    first_token_at: float | None
    ended_at: float
    error: str | None = None
    text_tail: str = ""  # text held back at the last token (half a UTF-8 character): sent before the end


@dataclass
class TextTail:
    """The last piece of a reply's text that no token event carried."""
    text: str


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None  # None = the base model


class GenerationHandle:
    """What the asyncio side holds: an async iterator of events and a cancel switch."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def _emit(self, event) -> None:  # called from the engine thread
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # event loop closed: nobody is listening any more
            self.cancelled.set()

    def __aiter__(self):
        return self

    async def __anext__(self):
        if getattr(self, "_done", False):
            raise StopAsyncIteration
        event = await self._queue.get()
        if isinstance(event, EndEvent):
            self._done = True
        return event


@dataclass
class _Sequence:
    request: GenerationRequest
    handle: GenerationHandle
    queued_at: float
    generator: torch.Generator
    ids: list[int] = field(default_factory=list)
    cache: object = None
    next_logits: torch.Tensor | None = None
    prefilled: int = 0          # prompt tokens already in the cache
    text: str = ""
    first_token_at: float | None = None


def cache_argument_name(model) -> str:
    """transformers 5.x renamed `past_key_values` to `cache`; support both."""
    import inspect
    base = getattr(model, "get_base_model", lambda: model)()
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class Engine:
    def __init__(self, model, tokenizer, device: torch.device, stop_token_ids: set[int] | None = None,
                 max_batch: int = 32, prefill_chunk: int = 128):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.stop_ids = stop_token_ids or self._default_stop_ids(tokenizer)
        self._inbox: queue.Queue = queue.Queue()
        self._active: list[_Sequence] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.steps = 0                  # tokens sampled
        self.batched_rows = 0           # of which fed back in a batched forward
        self.mixed_forwards = 0         # forwards over rows on several adapter versions
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.adapters = None            # AdapterSlots, set by the hot-swap part; None = base only
        self.refs: dict[str, int] = {}  # adapter version -> streams using it (engine thread writes)
        self._batch = DecodeBatch()     # KV rows of the prefilled, decoding sequences
        self._cache_arg = cache_argument_name(model)

    @staticmethod
    def _default_stop_ids(tok) -> set[int]:
        ids = {tok.eos_token_id}
        for special in ("<|im_end|>", "<|endoftext|>"):
            tid = tok.convert_tokens_to_ids(special)
            if isinstance(tid, int) and tid != tok.unk_token_id:
                ids.add(tid)
        return {i for i in ids if i is not None}

    # --- asyncio side -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout: float = 10) -> None:
        self._stopping.set()
        self._inbox.put(None)
        self._thread.join(timeout)

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None) -> GenerationHandle:
        handle = GenerationHandle(loop or asyncio.get_running_loop())
        self._inbox.put(("gen", request, handle, time.time()))
        return handle

    def call(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        """Run fn on the engine thread between decode steps (adapter loads, scoring)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._inbox.put(("call", fn, fut))
        return fut

    # --- engine thread --------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stopping.is_set():
            self._drain_inbox(block=not self._active)
            self._round()
        for seq in list(self._active):   # _finish removes from the list
            self._finish(seq, "cancelled")

    def _round(self) -> None:
        """Every decoding sequence gets one token, and the oldest waiting prompt gets one
        prefill chunk: sample a token for each, then feed those tokens back in one batched
        forward. Adapter loads queued meanwhile run between these pieces, so a load waits
        for one forward pass, not for a whole round. Prompts are prefilled first come,
        first served rather than all a chunk each round: eight prompts arriving together
        then see their first tokens one after another instead of all at the end."""
        decode: list[tuple[_Sequence, int]] = []
        prefilled = False
        for i, seq in enumerate(list(self._active)):
            if i:
                self._drain_inbox(block=False)
            if seq.handle.cancelled.is_set():
                self._finish(seq, "cancelled")
                continue
            try:
                if seq.next_logits is None:
                    if prefilled:
                        continue  # its turn comes when the prompts before it are in
                    prefilled = True
                    if not self._prefill(seq):
                        continue  # more of the prompt next round
                tok = self._sample(seq)
            except Exception as exc:
                self._fail([seq], exc)
                continue
            if tok is not None:
                decode.append((seq, tok))
        if decode:
            self._drain_inbox(block=False)
            try:
                self._decode(decode)
            except Exception as exc:
                self._fail([seq for seq, _ in decode], exc)

    def _fail(self, seqs: list[_Sequence], exc: Exception) -> None:
        log.exception("generation failed")
        for seq in seqs:
            self._finish(seq, "error", error=f"{type(exc).__name__}: {exc}")

    def _drain_inbox(self, block: bool) -> None:
        while True:
            try:
                item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            except queue.Empty:
                return
            block = False
            if item is None:
                return
            if item[0] == "gen":
                _, request, handle, queued_at = item
                gen = torch.Generator(device="cpu").manual_seed(request.params.seed)
                seq = _Sequence(request, handle, queued_at, gen)
                name = request.adapter or "base"
                self.refs[name] = self.refs.get(name, 0) + 1   # released in _finish, on every exit path
                self._active.append(seq)
            elif item[0] == "call":
                _, fn, fut = item
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except Exception as exc:  # handed to the caller, who decides
                        fut.set_exception(exc)

    def activate_adapter(self, name: str | None) -> None:
        """Make `name` (None = base) the active weights; engine thread only."""
        if self.adapters is not None:
            self.adapters.activate(name)
        elif name not in (None, "base"):
            raise KeyError(f"adapter {name!r} is not loaded on this server")

    def _forward(self, seq: _Sequence, ids: list[int]) -> torch.Tensor:
        self.activate_adapter(seq.request.adapter)
        inp = torch.tensor([ids], device=self.device)  # [1, T]
        out = self.model(input_ids=inp, use_cache=True, logits_to_keep=1, **{self._cache_arg: seq.cache})
        seq.cache = getattr(out, self._cache_arg)
        return out.logits[0, -1]  # [V]

    def _prefill(self, seq: _Sequence) -> bool:
        """Feed the next chunk of the prompt; True once all of it is in. A long prompt is
        split so that no single forward pass holds up the other streams (or an adapter
        load waiting between passes) for long."""
        prompt = seq.request.prompt_ids
        chunk = prompt[seq.prefilled:seq.prefilled + self.prefill_chunk]
        logits = self._forward(seq, chunk)
        seq.prefilled += len(chunk)
        if seq.prefilled < len(prompt):
            return False
        seq.next_logits = logits
        if batchable([seq.cache]):
            self._batch.add(seq, seq.cache)
            seq.cache = None
        return True

    def _sample(self, seq: _Sequence) -> int | None:
        """Sample and emit the next token; None when the sequence ended here."""
        tok, logprob = sample_token(seq.next_logits, seq.request.params, seq.generator)
        if seq.first_token_at is None:
            seq.first_token_at = time.time()
        seq.ids.append(tok)
        self.steps += 1
        if tok in self.stop_ids:
            # The stop token is logged with its log-prob (the learner must learn when to
            # stop too) but carries no text.
            seq.handle._emit(TokenEvent(tok, logprob, ""))
            self._finish(seq, "stop")
            return None
        text = self.tokenizer.decode(seq.ids, skip_special_tokens=True)  # the stop token is never here
        delta = ""
        if not text.endswith("\ufffd"):  # hold back half a UTF-8 character
            delta, seq.text = text[len(seq.text):], text
        seq.handle._emit(TokenEvent(tok, logprob, delta))
        if len(seq.ids) >= seq.request.params.max_new_tokens:
            self._finish(seq, "length")
            return None
        return tok

    def _decode(self, group: list[tuple[_Sequence, int]]) -> None:
        """Feed each sequence its sampled token: one forward pass for the batch (in chunks of
        max_batch rows), whatever versions its rows are on; sequences outside it, one each."""
        batch = self._batch
        rows = []
        for seq, tok in group:
            if seq in batch:
                rows.append((seq, tok))
            else:
                seq.next_logits = self._forward(seq, [tok])
        if not rows:
            return
        logits = batch.step(self.model, self._cache_arg, rows, self.max_batch, self.device, self._adapter_args)
        for (seq, _), row in zip(rows, logits):
            seq.next_logits = row
        if min(len(batch), self.max_batch) > 1:
            self.batched_rows += len(rows)

    def _adapter_args(self, rows: list[_Sequence]) -> dict:
        """Ready the weights for one forward over `rows`: one version -> activate it; rows on
        several -> PEFT's mixed-adapter batch (each row gets its own version's LoRA delta, the
        base weights are read once), instead of one forward pass per version."""
        versions = {None if seq.request.adapter in (None, "", "base") else seq.request.adapter for seq in rows}
        if len(versions) == 1:
            self.activate_adapter(versions.pop())
            return {}
        self.mixed_forwards += 1
        if self.adapters is None:
            raise KeyError(f"adapters {sorted(v for v in versions if v)} are not loaded on this server")
        return {"adapter_names": self.adapters.names_for([seq.request.adapter for seq in rows])}

    def _finish(self, seq: _Sequence, reason: str, error: str | None = None) -> None:
        if seq in self._active:
            self._active.remove(seq)
            name = seq.request.adapter or "base"
            self.refs[name] -= 1
        if seq in self._batch:
            self._batch.remove(seq)
        seq.cache = None  # free the KV cache now, not when the handle is collected
        tail = self.tokenizer.decode(seq.ids, skip_special_tokens=True)[len(seq.text):] if seq.ids else ""
        seq.handle._emit(EndEvent(reason, len(seq.ids), seq.queued_at, seq.first_token_at, time.time(), error,
                                  text_tail=tail))
