"""Decode steps for several sequences in one forward pass, over a KV cache kept stacked.

A `DecodeBatch` holds the keys and values of every sequence being decoded (whatever
adapter version it is on), one row each, in buffers preallocated per layer ([rows, heads,
tokens, dim], grown by doubling). Rows have different lengths and are right-padded: a step
writes each row's new key/value at that row's own length (one column, in place), the
attention mask hides each row's padding, and each row gets its own position, so a row
computes what its sequence alone would (up to float rounding).

Why not stack each sequence's own cache for every step: on a CPU that copy (plus
`DynamicCache`'s `torch.cat` per appended token) grows with the context and was ~70 % of a
step over eight 1k-token streams — slower than eight separate forwards. Here a step costs
the weights read once plus attention over the rows; a sequence's cache is copied only when
it joins (after its prefill) and when the row it leaves is refilled by the last row.
"""
from __future__ import annotations

import functools

import torch


def _grown(size: int, need: int, floor: int) -> int:
    while size < need:
        size = max(size * 2, floor)
    return size


def batchable(caches: list) -> bool:
    """Only plain full-attention dynamic caches whose layers all hold keys and values of one
    head count, width, dtype and device join a batch (its buffers are shaped alike); anything
    else (sliding windows, quantized or static caches, keys wider than values, layers split
    over devices) decodes one sequence at a time."""
    from transformers.cache_utils import DynamicLayer

    def uniform(c) -> bool:
        if not (hasattr(c, "layers") and c.layers and all(type(layer) is DynamicLayer for layer in c.layers)):
            return False
        first = c.layers[0].keys
        return first is not None and all(
            t is not None and t.shape[1] == first.shape[1] and t.shape[3] == first.shape[3]
            and t.dtype == first.dtype and t.device == first.device
            for layer in c.layers for t in (layer.keys, layer.values))
    return all(uniform(c) for c in caches)


class DecodeBatch:
    """The KV rows of the sequences being decoded. Engine thread only."""

    def __init__(self):
        self.members: list[object] = []   # row i belongs to members[i]
        self.lengths: list[int] = []      # tokens in row i's cache
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, member) -> bool:
        return any(m is member for m in self.members)

    def _capacity(self) -> tuple[int, int]:
        return (self._keys[0].shape[0], self._keys[0].shape[2]) if self._keys else (0, 0)

    def _resize(self, rows: int, tokens: int, like: torch.Tensor | None = None, layers: int = 0) -> None:
        """Reallocate every layer's buffers to [rows, heads, tokens, dim], keeping what fits."""
        like = self._keys[0] if self._keys else like
        layers = len(self._keys) or layers
        _, heads, _, dim = like.shape
        cur_rows, cur_tokens = self._capacity()
        keep_rows, keep_tokens = min(rows, cur_rows), min(tokens, cur_tokens)
        # zeros, not empty: a masked-out column still meets the values (0 * NaN is NaN)
        fresh = [torch.zeros(rows, heads, tokens, dim, dtype=like.dtype, device=like.device)
                 for _ in range(2 * layers)]
        for old, new in zip(self._keys + self._values, fresh):
            new[:keep_rows, :, :keep_tokens] = old[:keep_rows, :, :keep_tokens]
        self._keys, self._values = fresh[:layers], fresh[layers:]

    def _ensure(self, rows: int, tokens: int, like: torch.Tensor | None = None, layers: int = 0) -> None:
        """Grow (by doubling) to hold `rows` rows of `tokens` tokens."""
        cur_rows, cur_tokens = self._capacity()
        new_rows, new_tokens = _grown(cur_rows, rows, 4), _grown(cur_tokens, tokens, 64)
        if (new_rows, new_tokens) != (cur_rows, cur_tokens):
            self._resize(new_rows, new_tokens, like, layers)

    def _shrink(self) -> None:
        """Give memory back once the batch needs a quarter of it: the buffers are as wide as
        the longest row ever was, and a long conversation that ended should not keep them so."""
        need_rows, need_tokens = _grown(0, len(self.members), 4), _grown(0, max(self.lengths) + 1, 64)
        cur_rows, cur_tokens = self._capacity()
        if cur_rows >= 4 * need_rows or cur_tokens >= 4 * need_tokens:
            self._resize(min(cur_rows, 2 * need_rows), min(cur_tokens, 2 * need_tokens))

    def add(self, member, cache) -> None:
        """Copy a prefilled sequence's DynamicCache into a new last row."""
        n = cache.get_seq_length()
        self._ensure(len(self.members) + 1, n + 1, cache.layers[0].keys, len(cache.layers))
        row = len(self.members)
        for layer, k, v in zip(cache.layers, self._keys, self._values):
            k[row, :, :n] = layer.keys[0]
            v[row, :, :n] = layer.values[0]
        self.members.append(member)
        self.lengths.append(n)

    def row_kv(self, member) -> tuple[int, list[torch.Tensor], list[torch.Tensor]]:
        """(length, keys, values) of member's row, copied out: [1, heads, length, dim] per layer."""
        row = next(i for i, m in enumerate(self.members) if m is member)
        n = self.lengths[row]
        return (n, [k[row:row + 1, :, :n].clone() for k in self._keys],
                [v[row:row + 1, :, :n].clone() for v in self._values])

    def remove(self, member) -> None:
        """Free member's row: the last row moves into it (one row copied, not the batch)."""
        row = next(i for i, m in enumerate(self.members) if m is member)
        last = len(self.members) - 1
        if row != last:
            n = self.lengths[last]
            for k, v in zip(self._keys, self._values):
                k[row, :, :n] = k[last, :, :n]
                v[row, :, :n] = v[last, :, :n]
            self.members[row], self.lengths[row] = self.members[last], self.lengths[last]
        self.members.pop()
        self.lengths.pop()
        if not self.members:      # let the memory go with the last stream
            self._keys, self._values = [], []
        else:
            self._shrink()

    def step(self, model, cache_arg: str, feed: list[tuple[object, int]], max_rows: int, device, *,
             prepare=lambda members: {}) -> list:
        """Feed members their tokens (`feed`: (member, token id) pairs), in forwards of at
        most `max_rows` rows; returns next-token logits [V] in feed's order. A member
        without a token this step gets a placeholder that is not kept (its length stays).
        `prepare(members of a forward)` readies the model and returns extra forward kwargs.
        A forward that raises gives its rows the exception instead of logits (their lengths
        stay; the columns it may have written are past them), so the caller can retry them."""
        where = {id(m): i for i, (m, _) in enumerate(feed)}
        out: list = [None] * len(feed)
        for lo in range(0, len(self.members), max_rows):
            hi = min(lo + max_rows, len(self.members))
            idx = [where.get(id(m)) for m in self.members[lo:hi]]
            if all(i is None for i in idx):
                continue
            toks = [0 if i is None else feed[i][1] for i in idx]
            try:
                logits = self._forward(model, cache_arg, lo, hi, toks, device=device, extra=prepare(self.members[lo:hi]))
            except Exception as exc:
                for i in idx:
                    if i is not None:
                        out[i] = exc
                continue
            for row, i in enumerate(idx):
                if i is not None:
                    out[i] = logits[row]
                    self.lengths[lo + row] += 1
        return out

    def _forward(self, model, cache_arg, lo, hi, toks, *, device, extra: dict) -> torch.Tensor:
        lens = self.lengths[lo:hi]
        width = max(lens) + 1
        self._ensure(len(self.members), width)
        host = torch.tensor([toks, lens])                          # [2, rows]: one copy to the device
        toks_t, lens_t = host.to(self._keys[0].device).unbind(0)
        mask = (torch.arange(width, device=lens_t.device) <= lens_t[:, None]).long()   # real tokens + the new one
        cache = _rows_cache_class()(self, lo, hi, lens_t, width - 1)
        res = model(input_ids=toks_t[:, None], attention_mask=mask, position_ids=lens_t[:, None],
                    use_cache=True, logits_to_keep=1, **{cache_arg: cache}, **extra)
        return res.logits[:, -1]


@functools.cache
def _rows_cache_class():
    """Defined on first use: importing transformers takes seconds, and only a loaded model
    needs it."""
    from transformers.cache_utils import Cache, CacheLayerMixin

    class RowsLayer(CacheLayerMixin):
        """One layer of rows [lo, hi) of a DecodeBatch, seen by the model as a cache whose
        length is the widest row; update writes each row's new column in place."""
        is_sliding = False
        is_compileable = False

        def __init__(self, keys, values, lo, hi, *, rows, cols, width):
            super().__init__()
            self._k, self._v, self._lo, self._hi = keys, values, lo, hi
            self._rows, self._cols, self._width = rows, cols, width
            self.is_initialized = True

        def lazy_initialization(self, key_states, value_states):  # the buffers already exist
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            self._k[self._rows, :, self._cols] = key_states[:, :, -1]
            self._v[self._rows, :, self._cols] = value_states[:, :, -1]
            w = self._width + 1
            return self._k[self._lo:self._hi, :, :w], self._v[self._lo:self._hi, :, :w]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self._width + query_length, 0

        def get_seq_length(self) -> int:
            return self._width

        def get_max_length(self) -> int:
            return -1

    class RowsCache(Cache):
        def __init__(self, batch, lo, hi, cols, width):
            rows = torch.arange(lo, hi, device=cols.device)   # index tensors made once per step, not per layer
            super().__init__(layers=[RowsLayer(k, v, lo, hi, rows=rows, cols=cols, width=width)
                                     for k, v in zip(batch._keys, batch._values)])

    return RowsCache
