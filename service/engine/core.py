"""The generation engine: one thread owns the model.

The asyncio side only submits requests and receives events; every model call and every
adapter load happens on this thread between forward passes, so there is no model call on the
event loop and no global `set_adapter` race.

The thread runs rounds. The scheduler (scheduler.py, pure) plans each round: who ends, which
prompt gets a prefill chunk, who samples; the model runner (runner.py) does the forward passes
and the sampling; this module admits requests, runs the plan, streams each token's text
(detokenizer.py) and ends each request with exactly one EndEvent.

No request can stop the engine: a request that fails (in its prefill, its sampling, its row of
a batched forward) ends alone with FinishReason.ERROR; a failure outside any one request ends
the streams in flight and the loop goes on. Only a BaseException ends the thread; it then ends
every stream and call it holds and reports through `on_death`.
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
from core.modeling import default_stop_ids
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
from service.engine.runner import ModelRunner
from service.engine.scheduler import (  # noqa: F401 (prefill_end re-exported)
    admits,
    finish_after,
    keeps_prefix,
    line_places,
    plan_round,
    prefill_end,
    retry_after,
    tell_place,
)
from service.engine.sequence import Sequence

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, model, tokenizer, device: torch.device, stop_token_ids: set[int] | None = None, *,
                 max_batch: int = 32, prefill_chunk: int = 128, on_death: Callable[[str], None] | None = None,
                 max_queue: int | None = None, prefix_cache_bytes: int = 0):
        self.runner = ModelRunner(model, device, max_batch=max_batch, prefill_chunk=prefill_chunk,
                                  prefix_cache_bytes=prefix_cache_bytes)
        self.tokenizer = tokenizer
        self.stop_ids = stop_token_ids or default_stop_ids(tokenizer)
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self._inbox: queue.Queue[InboxMessage] = queue.Queue()
        self._active: list[Sequence] = []   # in line order: admitted first, first
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._lock = threading.Lock()   # submit vs the thread's last drain when it ends
        self._dead = False
        self.failure: str | None = None  # why the thread ended, if not by shutdown()
        self.on_death = on_death         # called (engine thread) once when the thread dies
        self.steps = 0                  # tokens sampled
        self.failed_requests = 0        # requests ended with FinishReason.ERROR
        self.max_queue = max_queue      # most requests waiting for their first token; None = no bound
        self.waiting = 0                # submitted, prompt not yet in (under _lock)
        self.prefill_s = 0.5            # running mean of one prompt's prefill time, for retry_after
        self.refs: dict[str, int] = {}  # adapter version -> streams using it (engine thread writes)

    # --- what the runner holds, as the engine's own (AdapterSlots and callers set and read these)
    @property
    def model(self):
        return self.runner.model

    @model.setter
    def model(self, model) -> None:   # AdapterSlots wraps it in a PeftModel (engine thread)
        self.runner.model = model

    @property
    def adapters(self):
        """AdapterSlots, set by the hot-swap part (or the first load_adapter); None = base only."""
        return self.runner.adapters

    @adapters.setter
    def adapters(self, slots) -> None:
        self.runner.adapters = slots

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def prefix(self):
        return self.runner.prefix

    @property
    def batched_rows(self) -> int:
        return self.runner.batched_rows

    @property
    def mixed_forwards(self) -> int:
        return self.runner.mixed_forwards

    def activate_adapter(self, name: str | None) -> None:
        """Make `name` (None = base) the active weights; engine thread only (inside `call`)."""
        self.runner.activate_adapter(name)

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
        return retry_after(self.waiting, self.prefill_s)

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None) -> GenerationHandle:
        """Queue a request (ValueError if it is malformed, EngineBusy past max_queue); an
        engine that has stopped ends it at once with FinishReason.ERROR."""
        self.validate(request)
        handle = GenerationHandle(loop or asyncio.get_running_loop())
        now = time.time()
        with self._lock:
            if not self._dead:
                if not admits(self.waiting, self.max_queue):
                    raise EngineBusy(self.waiting, self.retry_after())
                self.waiting += 1
                self._inbox.put(Generate(request, handle, now))
                return handle
        handle._emit(EndEvent.unstarted(FinishReason.ERROR, now, now, self._stopped_text()))
        return handle

    def cancel(self, handle: GenerationHandle) -> None:
        """Stop a request: it ends with FinishReason.CANCELLED at the next round."""
        handle.cancel()

    def _stopped_text(self) -> str:
        return f"the engine has stopped ({self.failure or 'shutdown'})"

    def call(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        """Run fn on the engine thread between forward passes (adapter loads, scoring)."""
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

    @property
    def streams(self) -> int:
        """Requests in flight (decoding or waiting for their prompt): a hint for work that should
        wait for an idle engine (read from any thread)."""
        return len(self._active) + self.waiting

    def status(self) -> dict:
        weight = next(self.model.parameters())
        return {"engine": "local", "alive": self.alive, "failure": self.failure, "waiting": self.waiting,
                "device": str(weight.device), "dtype": str(weight.dtype).removeprefix("torch.")}

    async def aclose(self) -> None:
        """Nothing held on the event loop (shutdown() stops the thread)."""

    # --- engine thread: the loop, the inbox ---------------------------------------------
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
                    self.runner.reset()
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

    def _drain_inbox(self, block: bool) -> None:
        """Admit new requests and run engine calls; `block`: wait (up to 0.5 s) for the first."""
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
        try:
            seq.generator = self.runner.generator(item.request.params.seed)
        except Exception as exc:
            self._fail([seq], exc)

    # --- engine thread: one round ---------------------------------------------------------
    def _round(self) -> None:
        """Run the scheduler's plan for this round (the steps are listed in scheduler.py)."""
        plan = plan_round(self._active)
        for seq in plan.cancel:
            self._finish(seq, FinishReason.CANCELLED)
        if plan.prefill is not None:
            self._drain_inbox(block=False)
            try:
                self._prefill(plan.prefill)
            except Exception as exc:
                self._fail([plan.prefill], exc)
        decode = self._sample([seq for seq in plan.rows if seq.decoding and not seq.ended])
        if decode:
            self._drain_inbox(block=False)
            for seq, exc in self.runner.decode(decode):
                self._fail([seq], exc)
        for seq, place in line_places(self._active):
            if tell_place(seq.position, place):
                seq.handle._emit(QueuedEvent(place))
            seq.position = place

    def _prefill(self, seq: Sequence) -> None:
        """One chunk of the prompt; once all of it is in, the request leaves the line."""
        if seq.prefill_started is None:
            seq.prefill_started = time.monotonic()
        if self.runner.prefill(seq):
            self.prefill_s += 0.2 * (time.monotonic() - seq.prefill_started - self.prefill_s)
            self._left_queue(seq)

    def _sample(self, seqs: list[Sequence]) -> list[tuple[Sequence, int]]:
        """Draw every ready row's next token and stream it; the (sequence, token) pairs that
        go on to be fed back. A row that fails ends alone."""
        decode = []
        for seq, row in zip(seqs, self.runner.sample(seqs)):
            if isinstance(row, Exception):
                self._fail([seq], row)
            elif row.bad:
                self._fail([seq], "the model produced NaN/inf logits for this stream")
            else:
                try:
                    if self._emit_token(seq, row.token, row.logprob):
                        decode.append((seq, row.token))
                except Exception as exc:   # e.g. the tokenizer on an odd id: this stream alone
                    self._fail([seq], exc)
        return decode

    def _emit_token(self, seq: Sequence, tok: int, logprob: float) -> bool:
        """Record and stream a sampled token; False when the sequence ended with it."""
        if seq.first_token_at is None:
            seq.first_token_at = time.time()
        seq.ids.append(tok)
        self.steps += 1
        end = finish_after(tok, len(seq.ids), self.stop_ids, seq.request.params.max_new_tokens)
        if end is FinishReason.STOP:
            # The stop token is logged with its log-prob (the learner must learn when to
            # stop too) but carries no text.
            seq.detok.hold(tok)
            seq.handle._emit(TokenEvent(tok, logprob, ""))
        else:
            seq.handle._emit(TokenEvent(tok, logprob, seq.detok.push(tok)))   # '' while half a character is held
        if end is not None:
            self._finish(seq, end)
            return False
        return True

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

    def _finish(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> None:
        """End a sequence with its one EndEvent (a second call does nothing)."""
        if seq.ended:
            return
        seq.ended = True
        if keeps_prefix(reason):
            try:
                self.runner.keep_prefix(seq)
            except Exception:   # an optimisation: never what ends a stream badly
                log.exception("keeping a prefix cache failed")
        self._left_queue(seq)
        if seq in self._active:
            self._active.remove(seq)
            self.refs[seq.adapter] -= 1
        self.runner.release(seq)
        seq.handle._emit(EndEvent(reason, len(seq.ids), seq.queued_at, seq.first_token_at, time.time(), error,
                                  text_tail=seq.detok.tail(), prefix_reused=seq.reused, peak_rows=seq.peak_rows))
