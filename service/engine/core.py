"""The generation engine: one thread owns the model.

The asyncio side only submits requests and receives events; every model call,
and later every adapter load, happens on this thread between decode steps, so
there is no model call on the event loop and no global `set_adapter` race.

Scheduling is per round: each active sequence advances one token per round, so
streams interleave fairly and a cancelled one frees its slot at the next step. Prompts
are prefilled one at a time, in chunks of at most `prefill_chunk` tokens per round; a
prefilled sequence's cache then moves into the `DecodeBatch`, and the tokens of a round
are fed back in one forward pass (`batching.py`), rows on different adapter versions
included (PEFT's mixed-adapter batch). The next tokens of all rows are sampled in one
batched call on the model's device, read back with one host sync per round.

No request can stop the engine: a request that fails (in its prefill, its sampling, its
row of a batched forward) ends alone with finish_reason "error"; a failure outside any
one request ends the streams in flight and the loop goes on. Only a BaseException ends the
thread; it then ends every stream and call it holds and reports through `on_death`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from core.adapter_format import ValidAdapter
from core.modeling import cache_argument_name, default_stop_ids
from core.sampling import sample_batch
from service.engine.batching import DecodeBatch, batchable
from service.engine.detokenizer import IncrementalDetokenizer
from service.engine.events import (  # noqa: F401 (re-exported: the serving layer imports events from here)
    Call,
    EndEvent,
    EngineBusy,
    EngineStopped,
    FinishReason,
    Generate,
    GenerationHandle,
    GenerationRequest,
    InboxMessage,
    QueuedEvent,
    Shutdown,
    TextTail,
    TokenEvent,
    error_text,
    validate_request,
)
from service.engine.interface import AdapterLoad
from service.engine.prefix_cache import PrefixCache, as_dynamic_cache, kv_of
from service.engine.scheduler import prefill_end
from service.engine.sequence import Sequence

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, model, tokenizer, device: torch.device, stop_token_ids: set[int] | None = None, *,
                 max_batch: int = 32, prefill_chunk: int = 128, on_death: Callable[[str], None] | None = None,
                 max_queue: int | None = None, prefix_cache_bytes: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.stop_ids = stop_token_ids or default_stop_ids(tokenizer)
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self._inbox: queue.Queue[InboxMessage] = queue.Queue()
        self._active: list[Sequence] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._lock = threading.Lock()   # submit vs the thread's last drain when it ends
        self._dead = False
        self.failure: str | None = None  # why the thread ended, if not by shutdown()
        self.on_death = on_death         # called (engine thread) once when the thread dies
        self.steps = 0                  # tokens sampled
        self.batched_rows = 0           # of which fed back in a batched forward
        self.mixed_forwards = 0         # forwards over rows on several adapter versions
        self.failed_requests = 0        # requests ended with "error"
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.max_queue = max_queue      # most requests waiting for their first token; None = no bound
        self.waiting = 0                # submitted, prompt not yet in (under _lock)
        self.prefill_s = 0.5            # running mean of one prompt's prefill time, for retry_after
        self.adapters = None            # AdapterSlots, set by the hot-swap part; None = base only
        self.refs: dict[str, int] = {}  # adapter version -> streams using it (engine thread writes)
        self._batch = DecodeBatch()     # KV rows of the prefilled, decoding sequences
        self.prefix = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self._cache_arg = cache_argument_name(model)

    # --- asyncio side -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The thread runs and takes requests (False before start, after shutdown or death)."""
        return self._thread.is_alive() and not self._dead

    def shutdown(self, timeout: float = 10) -> None:
        self._stopping.set()
        self._inbox.put(Shutdown())
        self._thread.join(timeout)

    def validate(self, request: GenerationRequest) -> None:
        """What the engine needs of a request, checked before it reaches the thread."""
        validate_request(request, self.vocab_size)

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on: the prompts ahead, at the mean prefill time."""
        return max(1, min(60, round(self.waiting * self.prefill_s + 0.5)))

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None) -> GenerationHandle:
        """Queue a request (ValueError if it is malformed, EngineBusy past max_queue); an
        engine that has stopped ends it at once with finish_reason "error"."""
        self.validate(request)
        handle = GenerationHandle(loop or asyncio.get_running_loop())
        now = time.time()
        with self._lock:
            if not self._dead:
                if self.max_queue is not None and self.waiting >= self.max_queue:
                    raise EngineBusy(self.waiting, self.retry_after())
                self.waiting += 1
                self._inbox.put(Generate(request, handle, now))
                return handle
        handle._emit(EndEvent.unstarted(FinishReason.ERROR, now, now, self._stopped_text()))
        return handle

    def cancel(self, handle: GenerationHandle) -> None:
        """Stop a request: it ends with FinishReason.CANCELLED at the next step."""
        handle.cancel()

    def _stopped_text(self) -> str:
        return f"the engine has stopped ({self.failure or 'shutdown'})"

    def call(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        """Run fn on the engine thread between decode steps (adapter loads, scoring)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if not self._dead:
                self._inbox.put(Call(fn, fut))
                return fut
        fut.set_exception(EngineStopped(self._stopped_text()))
        return fut

    # --- adapters and status (the EngineClient interface) ---------------------------
    async def load_adapter(self, version: str, folder: Path, valid: ValidAdapter | None = None) -> AdapterLoad:
        """Load a version into an adapter slot on the engine thread, between forward passes."""
        if self.adapters is None:
            from service.engine.slots import AdapterSlots
            self.adapters = AdapterSlots(self)
        slots, took = self.adapters, []

        def on_engine():
            t = time.perf_counter()
            slots.load(version, folder, valid)
            took.append(time.perf_counter() - t)
        queued = time.perf_counter()
        await asyncio.wrap_future(self.call(on_engine))
        return AdapterLoad(took[0], engine_wait_s=time.perf_counter() - queued - took[0])

    async def unload_adapter(self, version: str) -> bool:
        """Free a version's slot (engine thread); False while a stream uses it."""
        slots = self.adapters
        return slots is not None and await asyncio.wrap_future(self.call(lambda: slots.unload(version)))

    def loaded_versions(self) -> list[str]:
        # the engine thread mutates slots.loaded: dict.copy() is one atomic step under the GIL
        return [] if self.adapters is None else list(self.adapters.loaded.copy())

    def status(self) -> dict:
        weight = next(self.model.parameters())
        return {"engine": "local", "alive": self.alive, "failure": self.failure, "waiting": self.waiting,
                "device": str(weight.device), "dtype": str(weight.dtype).removeprefix("torch.")}

    async def aclose(self) -> None:
        """Nothing held on the event loop (shutdown() stops the thread)."""

    # --- engine thread --------------------------------------------------------------
    def _run(self) -> None:
        reason = FinishReason.CANCELLED
        try:
            torch.set_grad_enabled(False)
            while not self._stopping.is_set():
                try:
                    self._drain_inbox(block=not self._active)
                    self._round()
                except Exception as exc:  # outside any one request: the streams' state is unknown
                    log.exception("engine round failed; ending the streams in flight, serving on")
                    self._fail(list(self._active), exc)
                    self._batch = DecodeBatch()
        except BaseException as exc:
            log.critical("engine thread died: %s", error_text(exc), exc_info=True)
            self.failure, reason = error_text(exc), FinishReason.ERROR
        finally:
            self._close(reason)

    def _close(self, reason: FinishReason) -> None:
        """End every stream held and every request or call still queued, then report a death."""
        with self._lock:
            self._dead = True
        for seq in list(self._active):   # _finish removes from the list
            try:
                self._finish(seq, reason, error=self.failure)
            except Exception:
                log.exception("ending a stream failed")
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Generate):
                with self._lock:
                    self.waiting -= 1
                item.handle._emit(EndEvent.unstarted(reason, item.queued_at, time.time(), self.failure))
            elif isinstance(item, Call) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(EngineStopped(self._stopped_text()))
        if self.failure and self.on_death is not None:
            try:
                self.on_death(self.failure)
            except Exception:
                log.exception("on_death callback failed")

    def _round(self) -> None:
        """Every decoding sequence gets one token, and the oldest waiting prompt gets one
        prefill chunk: sample a token for each, then feed those tokens back in one batched
        forward. Adapter loads queued meanwhile run between these pieces, so a load waits
        for one forward pass, not for a whole round. Prompts are prefilled first come,
        first served rather than all a chunk each round: eight prompts arriving together
        then see their first tokens one after another instead of all at the end."""
        ready: list[Sequence] = []
        prefilled = False
        for seq in list(self._active):
            if seq.handle.cancelled.is_set():
                self._finish(seq, FinishReason.CANCELLED)
                continue
            if seq.next_logits is None:
                if prefilled:
                    continue  # its turn comes when the prompts before it are in
                prefilled = True
                self._drain_inbox(block=False)
                try:
                    if not self._prefill(seq):
                        continue  # more of the prompt next round
                except Exception as exc:
                    self._fail([seq], exc)
                    continue
            ready.append(seq)
        decode = self._sample(ready)
        if decode:
            self._drain_inbox(block=False)
            self._decode(decode)
        self._tell_positions()

    def _tell_positions(self) -> None:
        """Waiting clients hear their place in the line when it changes (0, being prefilled, is
        not told: its first token follows)."""
        position = 0
        for seq in self._active:
            if seq.waiting:
                if position and position != seq.position:
                    seq.handle._emit(QueuedEvent(position))
                seq.position = position
                position += 1

    def _left_queue(self, seq: Sequence) -> None:
        if seq.waiting:
            seq.waiting = False
            with self._lock:
                self.waiting -= 1

    def _fail(self, seqs: list[Sequence], exc: Exception | str) -> None:
        if isinstance(exc, BaseException):
            log.error("generation failed for %d stream(s)", len(seqs), exc_info=exc)
        error = exc if isinstance(exc, str) else error_text(exc)
        for seq in seqs:
            self.failed_requests += 1
            self._finish(seq, FinishReason.ERROR, error=error)

    def _drain_inbox(self, block: bool) -> None:
        while True:
            try:
                item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            except queue.Empty:
                return
            block = False
            if isinstance(item, Shutdown):
                return
            if isinstance(item, Generate):
                self._admit(item)
            elif item.future.set_running_or_notify_cancel():
                try:
                    item.future.set_result(item.fn())
                except Exception as exc:  # handed to the caller, who decides
                    item.future.set_exception(exc)
                except BaseException as exc:  # the caller hears of it too; the thread ends
                    item.future.set_exception(exc)
                    raise

    def _admit(self, item: Generate) -> None:
        seq = Sequence(item.request, item.handle, item.queued_at, detok=IncrementalDetokenizer(self.tokenizer))
        self.refs[seq.adapter] = self.refs.get(seq.adapter, 0) + 1   # released in _finish, on every exit path
        self._active.append(seq)
        try:  # on the model's device: sampling there never waits on the host
            seq.generator = torch.Generator(device=self.device).manual_seed(item.request.params.seed)
        except Exception as exc:
            self._fail([seq], exc)

    def activate_adapter(self, name: str | None) -> None:
        """Make `name` (None = base) the active weights; engine thread only."""
        if self.adapters is not None:
            self.adapters.activate(name)
        elif name not in (None, "base"):
            raise KeyError(f"adapter {name!r} is not loaded on this server")

    def _forward(self, seq: Sequence, ids: list[int]) -> torch.Tensor:
        self.activate_adapter(seq.request.adapter)
        inp = torch.tensor([ids], device=self.device)  # [1, T]
        out = self.model(input_ids=inp, use_cache=True, logits_to_keep=1, **{self._cache_arg: seq.cache})
        seq.cache = getattr(out, self._cache_arg)
        return out.logits[0, -1]  # [V]

    def _prefill(self, seq: Sequence) -> bool:
        """Feed the next chunk of the prompt; True once all of it is in. A long prompt is
        split so that no single forward pass holds up the other streams (or an adapter
        load waiting between passes) for long."""
        prompt = seq.request.prompt_ids
        if seq.prefill_started is None:
            seq.prefill_started = time.monotonic()
            self._reuse_prefix(seq)
        chunk = prompt[seq.prefilled:prefill_end(seq.prefilled, len(prompt), self.prefill_chunk)]
        logits = self._forward(seq, chunk)
        seq.prefilled += len(chunk)
        if seq.prefilled < len(prompt):
            return False
        self.prefill_s += 0.2 * (time.monotonic() - seq.prefill_started - self.prefill_s)
        self._left_queue(seq)
        seq.next_logits = logits
        if batchable([seq.cache]):
            self._batch.add(seq, seq.cache)
            seq.cache = None
        return True

    def _reuse_prefix(self, seq: Sequence) -> None:
        """Start from the session's cached KV where the prompt begins with exactly its tokens."""
        key = seq.request.cache_key
        if self.prefix is None or key is None:
            return
        hit = self.prefix.take(key, seq.request.prompt_ids, seq.request.prefix_limit)
        if hit is not None:
            n, keys, values = hit
            seq.cache, seq.prefilled, seq.reused = as_dynamic_cache(keys, values), n, n

    def _keep_prefix(self, seq: Sequence) -> None:
        """When a reply ends, keep its KV (prompt + the reply tokens fed back) for the next turn."""
        key = seq.request.cache_key
        if self.prefix is None or key is None or seq.waiting:
            return
        if seq in self._batch:
            n, keys, values = self._batch.row_kv(seq)
        elif seq.cache is not None and batchable([seq.cache]):
            n, keys, values = kv_of(seq.cache)
        else:
            return
        self.prefix.put(key, (seq.request.prompt_ids + seq.ids)[:n], keys, values)

    def _sample(self, seqs: list[Sequence]) -> list[tuple[Sequence, int]]:
        """Sample every ready row in one batched call (one host sync); if that call fails,
        each row alone, so that only the rows that fail alone end."""
        if not seqs:
            return []
        try:
            drawn = self._sample_rows(seqs)
        except Exception:
            log.warning("batched sampling failed; sampling its %d rows one by one", len(seqs), exc_info=True)
            drawn = []
            for seq in seqs:
                try:
                    drawn += self._sample_rows([seq])
                except Exception as exc:
                    self._fail([seq], exc)
                    drawn.append(None)
        decode = []
        for seq, row in zip(seqs, drawn):
            if row is None:
                continue
            tok, logprob, bad = row
            if bad:
                self._fail([seq], "the model produced NaN/inf logits for this stream")
                continue
            try:
                if self._emit_token(seq, tok, logprob):
                    decode.append((seq, tok))
            except Exception as exc:   # e.g. the tokenizer on an odd id: this stream alone
                self._fail([seq], exc)
        return decode

    def _sample_rows(self, seqs: list[Sequence]) -> list[tuple[int, float, bool]]:
        logits = torch.stack([seq.next_logits for seq in seqs])                  # [B, V]
        toks, logprobs = sample_batch(logits, [s.request.params for s in seqs], [s.generator for s in seqs])
        top = logits.amax(-1)            # NaN if any is NaN, +inf if any is: one pass over [B, V], not three
        bad = top.isnan() | top.isposinf()                                       # [B]
        host = torch.stack([toks.double(), logprobs.double(), bad.double()]).tolist()  # the round's one sync
        return [(int(t), lp, b > 0) for t, lp, b in zip(*host)]

    def _emit_token(self, seq: Sequence, tok: int, logprob: float) -> bool:
        """Record and stream a sampled token; False when the sequence ended with it."""
        if seq.first_token_at is None:
            seq.first_token_at = time.time()
        seq.ids.append(tok)
        self.steps += 1
        if tok in self.stop_ids:
            # The stop token is logged with its log-prob (the learner must learn when to
            # stop too) but carries no text.
            seq.detok.hold(tok)
            seq.handle._emit(TokenEvent(tok, logprob, ""))
            self._finish(seq, FinishReason.STOP)
            return False
        seq.handle._emit(TokenEvent(tok, logprob, seq.detok.push(tok)))   # '' while half a character is held
        if len(seq.ids) >= seq.request.params.max_new_tokens:
            self._finish(seq, FinishReason.LENGTH)
            return False
        return True

    def _decode(self, group: list[tuple[Sequence, int]]) -> None:
        """Feed each sequence its sampled token: one forward pass for the batch (in chunks of
        max_batch rows), whatever versions its rows are on; sequences outside it, one each.
        A chunk whose forward fails is retried row by row: only the rows that fail alone end."""
        batch = self._batch
        rows = []
        for seq, tok in group:
            if seq in batch:
                rows.append((seq, tok))
            else:
                try:
                    seq.next_logits = self._forward(seq, [tok])
                except Exception as exc:
                    self._fail([seq], exc)
        if not rows:
            return
        logits = batch.step(self.model, self._cache_arg, rows, self.max_batch, self.device, self._adapter_args)
        shared = min(len(batch), self.max_batch)
        for (seq, tok), row in zip(rows, logits):
            seq.peak_rows = max(seq.peak_rows, shared)
            if isinstance(row, Exception):
                log.warning("a batched decode forward failed (%s); retrying its rows one by one", error_text(row))
                try:
                    row = batch.step(self.model, self._cache_arg, [(seq, tok)], 1, self.device, self._adapter_args)[0]
                except Exception as exc:
                    row = exc
                if isinstance(row, Exception):
                    self._fail([seq], row)
                    continue
            seq.next_logits = row
        if shared > 1:
            self.batched_rows += len(rows)

    def _adapter_args(self, rows: list[Sequence]) -> dict:
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

    def _finish(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> None:
        if seq.ended:
            return
        seq.ended = True
        if reason is not FinishReason.ERROR:
            try:
                self._keep_prefix(seq)
            except Exception:   # an optimisation: never what ends a stream badly
                log.exception("keeping a prefix cache failed")
        self._left_queue(seq)
        if seq in self._active:
            self._active.remove(seq)
            self.refs[seq.adapter] -= 1
        if seq in self._batch:
            self._batch.remove(seq)
        seq.cache = None  # free the KV cache now, not when the handle is collected
        seq.next_logits = None
        tail = seq.detok.tail()
        seq.handle._emit(EndEvent(reason, len(seq.ids), seq.queued_at, seq.first_token_at, time.time(), error,
                                  text_tail=tail, prefix_reused=seq.reused, peak_rows=seq.peak_rows))
