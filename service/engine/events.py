"""What the engine and the asyncio side exchange: requests, the handle, events."""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from core.sampling import SamplingParams


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
    # How it was computed, so that a replay can take the same path (None: the engine does not say):
    prefix_reused: int | None = None  # prompt tokens whose KV came from the session's prefix cache
    peak_rows: int | None = None      # most rows of a decode forward it was in (>1: others' padding noise)


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
        if getattr(self, "_done", False):
            raise StopAsyncIteration
        event = await self._queue.get()
        if isinstance(event, EndEvent):
            self._done = True
        return event
