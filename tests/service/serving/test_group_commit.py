"""Group commit: order kept, concurrent submits share one flush, failures reach every
writer of the failed batch. The batched Lua script is checked against real Redis."""
from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aredis

from core.keys import Keys
from service.serving.group_commit import GroupCommit
from service.serving.store import ChatStore


def run_async(coro):
    """asyncio.run on a thread of its own: the Playwright fixtures keep an event loop
    running on the main thread for the whole session."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class Recorder:
    """A flush that remembers its batches and can be made to fail once."""

    def __init__(self):
        self.batches: list[list] = []
        self.fail_next: Exception | None = None

    async def __call__(self, items):
        await asyncio.sleep(0.01)          # a round trip: submits meanwhile queue up
        if self.fail_next:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.batches.append(list(items))
        return [f"r{item}" for item in items]


def test_concurrent_submits_share_flushes_and_keep_order():
    async def run():
        flush = Recorder()
        gc = GroupCommit(flush, max_batch=50)
        futs = [gc.submit(i) for i in range(120)]
        results = await asyncio.gather(*futs)
        return flush, gc, results
    flush, gc, results = run_async(run())
    assert results == [f"r{i}" for i in range(120)]
    assert [x for b in flush.batches for x in b] == list(range(120))       # order kept across batches
    assert [len(b) for b in flush.batches] == [50, 50, 20]                 # batches capped at max_batch
    assert gc.batches == 3 and gc.items == 120


def test_a_lone_submit_is_written_at_once():
    async def run():
        flush = Recorder()
        gc = GroupCommit(flush)
        first = await gc.submit("a")
        second = await gc.submit("b")
        return flush, first, second
    flush, first, second = run_async(run())
    assert (first, second) == ("ra", "rb") and flush.batches == [["a"], ["b"]]


def test_a_failed_batch_fails_each_of_its_writers_and_the_next_batch_still_runs():
    async def run():
        flush = Recorder()
        gc = GroupCommit(flush, max_batch=3)
        flush.fail_next = ConnectionError("redis away")
        futs = [gc.submit(i) for i in range(5)]
        return await asyncio.gather(*futs, return_exceptions=True), flush
    results, flush = run_async(run())
    assert all(isinstance(r, ConnectionError) for r in results[:3])
    assert results[3:] == ["r3", "r4"] and flush.batches == [[3, 4]]


@pytest.mark.integration
def test_batched_record_once_against_real_redis(redis_url, prefix, rdb):
    async def run():
        client = aredis.Redis.from_url(redis_url)
        store = ChatStore(client, Keys(prefix), feedback_id_ttl_s=1200)
        futs = [store.submit_once(f"u:{i % 150}", {"kind": "copy", "n": i}) for i in range(200)]
        futs.append(store.submit_once("derived:continuation:rep_x", {"kind": "continuation", "n": 200}))
        out = await asyncio.gather(*futs)
        batches = store._events.batches
        await client.aclose()
        return out, batches
    out, batches = run_async(run())
    created = [c for c, _ in out]
    assert created == [True] * 150 + [False] * 50 + [True]   # a repeat id, even within one batch, is stored once
    assert [sid for _, sid in out[150:200]] == [sid for _, sid in out[:50]]   # a repeat names the first copy
    stored = rdb.xrange(Keys(prefix).events)
    assert [int(f["n"]) for _, f in stored] == list(range(150)) + [200]
    assert batches < 20                                       # written together, not one call per event
    assert 1100 < rdb.ttl(Keys(prefix).feedback_id("u:0")) <= 1200   # a user's feedback ids: the hot window
    assert rdb.ttl(Keys(prefix).feedback_id("derived:continuation:rep_x")) > 6 * 24 * 3600  # until archived
