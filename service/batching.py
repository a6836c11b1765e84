"""One decode step for several sequences in a single forward pass.

Each sequence keeps its own KV cache (they start, stop and get cancelled at different
times). For a step, the caches are left-padded to the longest and stacked; an attention
mask hides the padding and each row gets its own position, so a row computes what that
sequence alone would (up to float rounding). The new token's keys and values are then
appended to each sequence's own cache.

On a CPU a decode step of a small model is bound by reading the weights, so eight rows
cost little more than one: this is where concurrent streams gain throughput.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def batchable(caches: list) -> bool:
    """Only plain full-attention dynamic caches are stacked; anything else (sliding
    windows, quantized or static caches) decodes one sequence at a time."""
    from transformers.cache_utils import DynamicLayer
    return all(hasattr(c, "layers") and c.layers and all(type(layer) is DynamicLayer for layer in c.layers)
               for c in caches)


def _stack_left_padded(tensors: list[torch.Tensor], length: int) -> torch.Tensor:
    """[1, H, L_i, D] each -> [B, H, length, D], zeros on the left."""
    return torch.cat([F.pad(t, (0, 0, length - t.shape[-2], 0)) if t.shape[-2] < length else t for t in tensors])


def decode_step(model, cache_arg: str, caches: list, tokens: list[int], device) -> torch.Tensor:
    """Feed tokens[i] to the sequence owning caches[i]; returns next-token logits [B, V] and
    appends the step's keys/values to every cache."""
    from transformers.cache_utils import DynamicCache
    lens = [c.get_seq_length() for c in caches]
    longest = max(lens)
    stacked = [(_stack_left_padded([c.layers[i].keys for c in caches], longest),
                _stack_left_padded([c.layers[i].values for c in caches], longest))
               for i in range(len(caches[0].layers))]
    mask = torch.zeros(len(caches), longest + 1, dtype=torch.long, device=device)
    for row, n in enumerate(lens):
        mask[row, longest - n:] = 1                               # real tokens + the new one
    out = model(input_ids=torch.tensor([[t] for t in tokens], device=device),
                attention_mask=mask, position_ids=torch.tensor([[n] for n in lens], device=device),
                use_cache=True, logits_to_keep=1, **{cache_arg: DynamicCache(stacked)})
    grown = getattr(out, cache_arg)
    for row, cache in enumerate(caches):
        for layer, new in zip(cache.layers, grown.layers):
            layer.update(new.keys[row:row + 1, :, -1:], new.values[row:row + 1, :, -1:])
    return out.logits[:, -1]
