"""Sessions' KV caches kept between turns, so the next turn prefills only what is new.

When a reply ends, the engine keeps the keys and values of everything it fed (prompt +
reply), with those token ids, under (session, adapter version). The next turn's prompt is
compared token by token: only the exact common prefix is reused (a history truncated or
re-tokenized differently reuses less, or nothing), and never across adapter versions (the
key holds the version; storing a session's cache drops its caches of other versions).
Bounded in bytes, least recently used dropped first. Engine thread only.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class _Entry:
    tokens: list[int]
    keys: list[torch.Tensor]     # per layer [1, heads, n, dim]
    values: list[torch.Tensor]
    nbytes: int


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.bytes = 0
        self.lookups = 0
        self.hits = 0
        self.tokens_saved = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: tuple, tokens: list[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> bool:
        """Keep a session's KV (tensors owned by the cache from now on); False if it cannot fit."""
        for other in [k for k in self._entries if k[0] == key[0]]:   # this session's older caches
            self._drop(other)
        nbytes = sum(t.numel() * t.element_size() for t in (*keys, *values))
        if nbytes > self.max_bytes or not tokens:
            return False
        self._entries[key] = _Entry(list(tokens), keys, values, nbytes)
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        return True

    def take(self, key: tuple, prompt: list[int],
             limit: int | None = None) -> tuple[int, list[torch.Tensor], list[torch.Tensor]] | None:
        """The longest cached exact prefix of `prompt` for this key, as (n, keys, values) with
        tensors [1, heads, n, dim]; None on a miss. At least one prompt token is left to
        prefill (its logits start the reply). The entry leaves the cache: the turn that
        takes it stores a longer one when it ends. `limit`: reuse at most that many tokens."""
        self.lookups += 1
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._drop(key)
        n = min(common_prefix(entry.tokens, prompt), len(prompt) - 1, len(prompt) if limit is None else limit)
        if n < 1:
            return None
        self.hits += 1
        self.tokens_saved += n
        return n, [k[:, :, :n] for k in entry.keys], [v[:, :, :n] for v in entry.values]

    def _drop(self, key: tuple) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.nbytes

    def stats(self) -> dict:
        return {"lookups": self.lookups, "hits": self.hits, "tokens_saved": self.tokens_saved, "bytes": self.bytes,
                "entries": len(self._entries), "evictions": self.evictions, "max_bytes": self.max_bytes}


def as_dynamic_cache(keys: list[torch.Tensor], values: list[torch.Tensor]):
    """A model-ready DynamicCache holding these per-layer keys and values."""
    from transformers import DynamicCache
    return DynamicCache(ddp_cache_data=list(zip(keys, values)))


def kv_of(cache) -> tuple[int, list[torch.Tensor], list[torch.Tensor]]:
    """(length, keys, values) of a lone sequence's DynamicCache (its tensors, not copies)."""
    return (cache.get_seq_length(), [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers])
