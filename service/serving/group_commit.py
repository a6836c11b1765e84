"""Group commit: many concurrent writers, one storage call per batch.

Feedback arrives from many connections at once, and each event costs a Redis round
trip plus an fsync (appendfsync always) when written alone. Here every `submit` joins
a queue; one flusher at a time hands everything queued so far to `flush` in a single
call, so a busy server writes hundreds of events per round trip while a quiet one
still writes each event at once (a batch of one). Submission order is kept, within
and across batches, so per-connection event order survives batching.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    def __init__(self, flush: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]], max_batch: int = 256):
        self._flush = flush
        self.max_batch = max_batch
        self._queue: list[tuple[Item, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self.batches = 0      # flush calls made (for tests and metrics)
        self.items = 0        # items written

    def submit(self, item: Item) -> asyncio.Future:
        """Queue `item` now (order is fixed at this call); the future gets its result
        once the batch holding it is written, or the batch's exception."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._run())
        return fut

    async def _run(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            try:
                results = await self._flush([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, fut in batch + self._queue:
                    fut.cancel()
                self._queue = []
                raise
            except Exception as exc:  # every writer in the batch learns it was not stored
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(batch)
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
