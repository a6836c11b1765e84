"""What the engine and the asyncio side exchange: requests, the handle, events, and the
messages of the local engine's inbox (as vLLM v1 keeps EngineCoreRequest / EngineCoreOutput:
typed structs, never tuples)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import threading
from dataclasses import dataclass
from typing import Callable

from core.sampling import SamplingParams


class FinishReason(enum.StrEnum):
    """Why a reply ended. The values are what reply records, the websocket protocol and the
    OpenAI API carry (a StrEnum: it compares, formats and serialises as the plain string)."""
    STOP = "stop"            # a stop token (or a stop string, cut by the serving layer)
    LENGTH = "length"        # max_new_tokens reached
    CANCELLED = "cancelled"  # the client stopped it, left, or the engine shut down
    ERROR = "error"          # this request failed; EndEvent.error says why


@dataclass
class TokenEvent:
    token_id: int
    logprob: float
    text: str          # new text since the previous event ('' while a multi-byte char is incomplete)


@dataclass
class EndEvent:
    finish_reason: FinishReason
    n_tokens: int
    queued_at: float
    first_token_at: float | None
    ended_at: float
    error: str | None = None
    text_tail: str = ""  # text held back at the last token (half a UTF-8 character): sent before the end
    # How it was computed, so that a replay can take the same path (None: the engine does not say):
    prefix_reused: int | None = None  # prompt tokens whose KV came from the session's prefix cache
    peak_rows: int | None = None      # most rows of a decode forward it was in (>1: others' padding noise)

    @classmethod
    def unstarted(cls, reason: FinishReason, queued_at: float, ended_at: float, error: str | None) -> EndEvent:
        """The end of a request that never produced a token (a stopped engine, a shutdown)."""
        return cls(reason, 0, queued_at, None, ended_at, error=error)


@dataclass
class TextTail:
    """The last piece of a reply's text that no token event carried."""
    text: str


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None  # None = the base model
    cache_key: tuple | None = None  # (session, adapter version): keep/reuse the KV prefix across turns
    prefix_limit: int | None = None  # reuse at most this many cached tokens (replay: what the server reused)


@dataclass
class QueuedEvent:
    """The request waits for its prompt to be taken: `position` requests are ahead of it."""
    position: int


@dataclass(frozen=True)
class Generate:
    """Inbox: a submitted request; the engine thread makes it a running sequence."""
    request: GenerationRequest
    handle: GenerationHandle
    queued_at: float


@dataclass(frozen=True)
class Call:
    """Inbox: a function to run on the engine thread between forward passes (adapter loads,
    scoring); its result or exception goes to `future`."""
    fn: Callable[[], object]
    future: concurrent.futures.Future


@dataclass(frozen=True)
class Shutdown:
    """Inbox: wakes the engine thread so that it sees it is stopping."""


InboxMessage = Generate | Call | Shutdown


def validate_request(request: GenerationRequest, vocab_size: int) -> None:
    """What either engine needs of a request, checked before it is queued (ValueError naming
    the field)."""
    if not isinstance(request.params, SamplingParams):
        raise ValueError(f"params must be SamplingParams, got {type(request.params).__name__}")
    ids = request.prompt_ids
    if not isinstance(ids, list) or not ids or not all(type(i) is int and 0 <= i < vocab_size for i in ids):
        raise ValueError(f"prompt_ids must be a non-empty list of token ids in [0, {vocab_size})")
    if request.adapter is not None and not isinstance(request.adapter, str):
        raise ValueError(f"adapter must be a version string or None, got {request.adapter!r}")


def error_text(exc: BaseException) -> str:
    """An exception as one bounded line, for EndEvent.error and the logs."""
    return f"{type(exc).__name__}: {exc}"[:500]


class EngineStopped(RuntimeError):
    """A call handed to an engine whose thread has ended."""


class EngineBusy(RuntimeError):
    """Refused at submit: `max_queue` requests already wait for their first token."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"{waiting} requests are already waiting; retry in {retry_after} s")
        self.waiting, self.retry_after = waiting, retry_after


class GenerationHandle:
    """What the asyncio side holds: an async iterator of events and a cancel switch."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self._on_end = None
        self._ended = False   # loop-thread state: the EndEvent has reached the loop
        self._done = False    # the reader got the EndEvent: iteration stops

    @property
    def on_end(self):
        """Called once on the event loop when the EndEvent is emitted, whether or not it is read.
        Set after submit(): an end emitted before it was set (a stopped engine ends a request
        inside submit) still calls it."""
        return self._on_end

    @on_end.setter
    def on_end(self, fn) -> None:
        self._on_end = fn
        if fn is not None and self._ended:
            self._loop.call_soon(fn)

    def cancel(self) -> None:
        self.cancelled.set()

    def summary(self) -> dict | None:
        """What reranking did, for the reply record (a RerankHandle says); None: one generation."""
        return None

    def _ended_on_loop(self) -> None:
        # Read on the loop, not on the engine thread, so an on_end set after submit() is seen.
        self._ended = True
        if self._on_end is not None:
            self._on_end()

    def _emit(self, event) -> None:  # called from the engine thread
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
            if isinstance(event, EndEvent):
                self._loop.call_soon_threadsafe(self._ended_on_loop)
        except RuntimeError:  # event loop closed: nobody is listening any more
            self.cancelled.set()

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._done:
            raise StopAsyncIteration
        event = await self._queue.get()
        if isinstance(event, EndEvent):
            self._done = True
        return event
