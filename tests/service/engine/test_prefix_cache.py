"""Prefix cache across turns: a session's KV (prompt + reply) is kept when a reply ends and
the next turn prefills only what is new. Greedy output with the cache equals output without
it, token for token; a cache is never reused across adapter versions nor past the first token
where the new prompt differs; the LRU stays within its byte bound."""
from __future__ import annotations

import asyncio
import re

import pytest
import torch

from core.modeling import load_model
from core.sampling import SamplingParams
from service.engine.core import Engine, GenerationRequest, TokenEvent
from service.engine.prefix_cache import PrefixCache, common_prefix
from tests.support.clients import Chat, http


def _kv(n: int, layers: int = 2) -> tuple[list, list]:
    return [torch.zeros(1, 2, n, 4) for _ in range(layers)], [torch.zeros(1, 2, n, 4) for _ in range(layers)]


def test_the_lru_stays_within_its_bound_and_drops_the_least_recently_used():
    per_token = 2 * 2 * 2 * 4 * 4                 # layers x (k, v) x heads x dim x float32 bytes
    cache = PrefixCache(max_bytes=25 * per_token)
    for i, n in enumerate((10, 10, 10)):
        assert cache.put((f"s{i}", "base"), list(range(n)), *_kv(n))
        assert cache.bytes <= cache.max_bytes
    assert len(cache) == 2 and cache.evictions == 1 and cache.take(("s0", "base"), list(range(20))) is None
    assert not cache.put(("big", "base"), list(range(30)), *_kv(30))   # larger than the whole cache: not kept
    assert cache.bytes == 20 * per_token and cache.stats()["entries"] == 2


def test_take_reuses_only_the_exact_common_prefix_and_only_for_its_version():
    cache = PrefixCache(max_bytes=1 << 20)
    cache.put(("s", "1"), [1, 2, 3, 4, 5, 6], *_kv(6))
    assert cache.take(("s", "2"), [1, 2, 3, 4, 5, 6, 7]) is None            # another version: never
    n, keys, values = cache.take(("s", "1"), [1, 2, 3, 9, 9, 9, 9])        # differs at token 3
    assert n == 3 and keys[0].shape == values[1].shape == (1, 2, 3, 4)
    cache.put(("s", "1"), [1, 2, 3], *_kv(3))
    assert cache.take(("s", "1"), [1, 2, 3])[0] == 2                        # one token left to prefill
    cache.put(("s", "1"), [7, 8], *_kv(2))
    assert cache.take(("s", "1"), [1, 2, 3]) is None and cache.hits == 2
    cache.put(("s", "1"), [1, 2], *_kv(2))
    cache.put(("s", "2"), [1, 2], *_kv(2))                                  # a session's other versions go
    assert len(cache) == 1 and common_prefix([1, 2, 3], [1, 2, 4]) == 2


def _reply(engine, loop, req) -> list[int]:
    async def one():
        return [ev.token_id for ev in [e async for e in engine.submit(req, loop)] if isinstance(ev, TokenEvent)]
    return asyncio.run_coroutine_threadsafe(one(), loop).result(120)


def _conversation(engine, loop, turns, version_of=lambda t: None, key=True):
    """Greedy turns of one session whose history is exactly the previous prompt + reply."""
    prompt, replies = [], []
    for t, new in enumerate(turns):
        prompt = prompt + new
        v = version_of(t)
        req = GenerationRequest(list(prompt), SamplingParams(temperature=0.0, max_new_tokens=8), adapter=v,
                                cache_key=("sess", v or "base") if key else None)
        reply = _reply(engine, loop, req)
        replies.append(reply)
        prompt = prompt + reply
    return replies


def test_greedy_turns_with_the_cache_equal_turns_without_it_and_a_version_swap_does_not_reuse(
        models_dir, tmp_path, loop):
    from service.engine.slots import AdapterSlots
    from tests.support.models import save_random_adapter
    turns = [list(range(3, 40)), [50, 51, 52, 53], [60, 61], [70, 71, 72]]
    out = {}
    for mb in (0, 64):
        loaded = load_model("tiny-random", models_dir, "cpu")
        engine = Engine(loaded.model, loaded.tokenizer, loaded.device, stop_token_ids={-1},
                        prefix_cache_bytes=mb << 20, prefill_chunk=16)
        engine.adapters = AdapterSlots(engine)
        engine.adapters.load("1", save_random_adapter(models_dir, tmp_path / f"v1-{mb}", seed=1))
        engine.start()
        try:
            out[mb] = (_conversation(engine, loop, turns),
                       _conversation(engine, loop, turns, version_of=lambda t: "1" if t >= 2 else None))
            stats = engine.prefix.stats() if engine.prefix else None
        finally:
            engine.shutdown()
    assert out[64] == out[0], "the prefix cache changed greedy output"
    assert out[0][0] != out[0][1], "the swap to version 1 changed nothing: the test could not see a stale reuse"
    # first conversation: turns 2-4 hit. Second (same session key): turn 1 hits the first's cache (its
    # prompt is an exact prefix), turn 2 hits, turn 3 (v1: another key) misses, turn 4 hits v1's.
    assert stats["lookups"] == 8 and stats["hits"] == 6
    assert stats["tokens_saved"] >= sum(len(t) for t in turns[:3]) + 3 * 8



@pytest.mark.integration
def test_over_the_websocket_greedy_replies_are_the_same_with_and_without_the_cache(server_factory):
    texts = ["hello there", "and then?", "tell me more", "why?"]
    replies = {}
    for mb in (0, 64):
        srv = server_factory(REWARDLOOP_TEMPERATURE=0, REWARDLOOP_PREFIX_CACHE_MB=mb)
        chat = Chat(srv, srv.token("pc-user"))
        replies[mb] = [chat.ask(t)["text"] for t in texts]
        chat.close()
        metrics = urllib_text(srv.url + "/metrics")
        if mb:
            hits = float(re.search(r"^rewardloop_prefix_cache_hits_total (\S+)", metrics, re.M).group(1))
            saved = float(re.search(r"^rewardloop_prefix_cache_tokens_saved_total (\S+)", metrics, re.M).group(1))
            held = float(re.search(r"^rewardloop_prefix_cache_bytes (\S+)", metrics, re.M).group(1))
            assert hits >= 3 and saved > 50 and held > 0
        else:
            assert "rewardloop_prefix_cache_hits" not in metrics
        assert http("GET", srv.url + "/readyz")[0] == 200
    assert replies[64] == replies[0]


def urllib_text(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read().decode()


def _sampled_conversation(engine, loop, turns, seed, key, limits=None):
    """Sampled turns (temperature 0.7); -> (replies, [EndEvent per turn])."""
    async def one(req):
        events = [e async for e in engine.submit(req, loop)]
        return [e.token_id for e in events if isinstance(e, TokenEvent)], events[-1]
    prompt, replies, ends = [], [], []
    for t, new in enumerate(turns):
        prompt = prompt + new
        req = GenerationRequest(list(prompt), SamplingParams(temperature=0.7, max_new_tokens=12, seed=seed + t),
                                cache_key=(key, "base"), prefix_limit=None if limits is None else limits[t])
        reply, end = asyncio.run_coroutine_threadsafe(one(req), loop).result(120)
        replies.append(reply)
        ends.append(end)
        prompt = prompt + reply
    return replies, ends


def test_a_replay_that_reuses_what_the_server_reused_is_token_identical_when_sampling(models_dir, loop):
    """Reusing a cached prefix changes the float rounding of later logits (a KV computed one
    token at a time, then a shorter prefill), and with a near-flat tiny model that flips a
    sampled token now and then (here about 2% of replies when a replay prefills everything).
    Replaying with each turn's logged `prefix_reused` takes the server's own path: identical."""
    loaded = load_model("tiny-random", models_dir, "cpu")
    server = Engine(loaded.model, loaded.tokenizer, loaded.device, prefix_cache_bytes=64 << 20)
    replay = Engine(loaded.model, loaded.tokenizer, loaded.device, prefix_cache_bytes=64 << 20)
    server.start()
    replay.start()
    try:
        for s in range(40):
            turns = [list(range(3 + s, 30 + s)), [50 + s, 51, 52], [60, 61 + s]]
            served, ends = _sampled_conversation(server, loop, turns, 1000 * s, f"s{s}")
            assert [e.prefix_reused for e in ends][0] == 0 and all(e.prefix_reused > 0 for e in ends[1:])
            assert all(e.peak_rows == 1 for e in ends)
            again, again_ends = _sampled_conversation(replay, loop, turns, 1000 * s, f"r{s}",
                                                      limits=[e.prefix_reused for e in ends])
            assert again == served, f"session {s}: the replay took the server's path and still differs"
            assert [e.prefix_reused for e in again_ends] == [e.prefix_reused for e in ends]
    finally:
        server.shutdown()
        replay.shutdown()


def test_peak_rows_says_when_a_reply_shared_its_decode_forwards(models_dir, loop):
    loaded = load_model("tiny-random", models_dir, "cpu")
    engine = Engine(loaded.model, loaded.tokenizer, loaded.device, stop_token_ids={-1})
    engine.start()

    async def end_of(ids):
        req = GenerationRequest(ids, SamplingParams(temperature=0.0, max_new_tokens=8))
        return [e async for e in engine.submit(req, loop)][-1]

    async def together():
        return await asyncio.gather(end_of(list(range(3, 20))), end_of(list(range(5, 12))))
    try:
        ends = asyncio.run_coroutine_threadsafe(together(), loop).result(120)
        assert [e.peak_rows for e in ends] == [2, 2] and [e.prefix_reused for e in ends] == [0, 0]
        assert asyncio.run_coroutine_threadsafe(end_of(list(range(3, 20))), loop).result(120).peak_rows == 1
    finally:
        engine.shutdown()
