"""The local engine's model runner: it executes what the scheduler decided (vLLM v1's
scheduler / model runner split). Prefill chunks and decode steps as forward passes, the next
token of every ready row sampled in one batched call, adapter weights readied per forward, and
the sessions' KV prefix cache. Engine thread only; it never decides who goes next.

Prompts are prefilled one at a time, in chunks (scheduler.prefill_end); a prefilled sequence's
cache then moves into the `DecodeBatch`, and the tokens of a round are fed back in one forward
pass (`batching.py`), rows on different adapter versions included (PEFT's mixed-adapter batch).
The next tokens of all rows are sampled in one batched call on the model's device, read back
with one host sync per round. A batched call that fails is retried row by row, so that only the
rows that fail alone end.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from core.modeling import cache_argument_name
from core.sampling import sample_batch
from core.versions import is_base
from service.engine.batching import DecodeBatch, batchable
from service.engine.events import error_text
from service.engine.prefix_cache import PrefixCache, as_dynamic_cache, kv_of
from service.engine.scheduler import forward_weights, prefill_end
from service.engine.sequence import Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampled:
    """One row's draw: the token, its log-prob under the distribution it was drawn from, and
    whether the row's logits held NaN or +inf (its stream must end)."""
    token: int
    logprob: float
    bad: bool


class ModelRunner:
    def __init__(self, model, device: torch.device, *, max_batch: int, prefill_chunk: int, prefix_cache_bytes: int):
        self.model = model                  # AdapterSlots may wrap it in a PeftModel (engine thread)
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.adapters = None                # AdapterSlots, set by the hot-swap part; None = base only
        self.batch = DecodeBatch()          # KV rows of the prefilled, decoding sequences
        self.prefix = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.cache_arg = cache_argument_name(model)
        self.batched_rows = 0               # tokens fed back in a batched forward
        self.mixed_forwards = 0             # forwards over rows on several adapter versions

    def reset(self) -> None:
        """Forget the batch after a failure outside any one request (its streams were ended)."""
        self.batch = DecodeBatch()

    def generator(self, seed: int) -> torch.Generator:
        """A request's own generator, on the model's device: sampling there never waits on the host."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def activate_adapter(self, name: str | None) -> None:
        """Make `name` (None = base) the active weights."""
        if self.adapters is not None:
            self.adapters.activate(name)
        elif not is_base(name):
            raise KeyError(f"adapter {name!r} is not loaded on this server")

    def _forward(self, seq: Sequence, ids: list[int]) -> torch.Tensor:
        self.activate_adapter(seq.request.adapter)
        inp = torch.tensor([ids], device=self.device)  # [1, T]
        out = self.model(input_ids=inp, use_cache=True, logits_to_keep=1, **{self.cache_arg: seq.cache})
        seq.cache = getattr(out, self.cache_arg)
        return out.logits[0, -1]  # [V]

    # --- prefill ------------------------------------------------------------------------
    def prefill(self, seq: Sequence) -> bool:
        """Feed the next chunk of the prompt; True once all of it is in (its logits are then
        ready to sample, and its cache is a row of the batch where it can be). A long prompt is
        split so that no single forward pass holds up the other streams (or an adapter load
        waiting between passes) for long."""
        prompt = seq.request.prompt_ids
        if seq.prefilled == 0:
            self._reuse_prefix(seq)
        chunk = prompt[seq.prefilled:prefill_end(seq.prefilled, len(prompt), self.prefill_chunk)]
        logits = self._forward(seq, chunk)
        seq.prefilled += len(chunk)
        if seq.prefilled < len(prompt):
            return False
        seq.next_logits = logits
        if batchable([seq.cache]):
            self.batch.add(seq, seq.cache)
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

    def keep_prefix(self, seq: Sequence) -> None:
        """When a reply ends, keep its KV (prompt + the reply tokens fed back) for the next turn."""
        key = seq.request.cache_key
        if self.prefix is None or key is None or seq.waiting:
            return
        if seq in self.batch:
            n, keys, values = self.batch.row_kv(seq)
        elif seq.cache is not None and batchable([seq.cache]):
            n, keys, values = kv_of(seq.cache)
        else:
            return
        self.prefix.put(key, (seq.request.prompt_ids + seq.ids)[:n], keys, values)

    def release(self, seq: Sequence) -> None:
        """A sequence ended: its batch row, cache and logits go now, not when its handle is collected."""
        if seq in self.batch:
            self.batch.remove(seq)
        seq.cache = None
        seq.next_logits = None

    # --- sampling -----------------------------------------------------------------------
    def sample(self, seqs: list[Sequence]) -> list[Sampled | Exception]:
        """Every ready row's next token in one batched call (one host sync); if that call fails,
        each row alone, so that a row that fails alone gets its exception and the others a draw."""
        if not seqs:
            return []
        try:
            return self._sample_rows(seqs)
        except Exception:
            log.warning("batched sampling failed; sampling its %d rows one by one", len(seqs), exc_info=True)
        drawn: list[Sampled | Exception] = []
        for seq in seqs:
            try:
                drawn += self._sample_rows([seq])
            except Exception as exc:
                drawn.append(exc)
        return drawn

    def _sample_rows(self, seqs: list[Sequence]) -> list[Sampled]:
        logits = torch.stack([seq.next_logits for seq in seqs])                  # [B, V]
        toks, logprobs = sample_batch(logits, [s.request.params for s in seqs], [s.generator for s in seqs])
        top = logits.amax(-1)            # NaN if any is NaN, +inf if any is: one pass over [B, V], not three
        bad = top.isnan() | top.isposinf()                                       # [B]
        host = torch.stack([toks.double(), logprobs.double(), bad.double()]).tolist()  # the round's one sync
        return [Sampled(int(t), lp, b > 0) for t, lp, b in zip(*host)]

    # --- decode -------------------------------------------------------------------------
    def decode(self, group: list[tuple[Sequence, int]]) -> list[tuple[Sequence, Exception]]:
        """Feed each sequence its sampled token: one forward pass for the batch (in chunks of
        max_batch rows), whatever versions its rows are on; sequences outside it, one each.
        A chunk whose forward fails is retried row by row. Returns the rows that failed alone."""
        failed, rows = [], []
        for seq, tok in group:
            if seq in self.batch:
                rows.append((seq, tok))
                continue
            try:
                seq.next_logits = self._forward(seq, [tok])
            except Exception as exc:
                failed.append((seq, exc))
        if not rows:
            return failed
        logits = self.batch.step(self.model, self.cache_arg, rows, self.max_batch, self.device,
                                 prepare=self._adapter_args)
        shared = min(len(self.batch), self.max_batch)
        for (seq, tok), row in zip(rows, logits):
            seq.peak_rows = max(seq.peak_rows, shared)
            if isinstance(row, Exception):
                row = self._retry_alone(seq, tok, row)
                if isinstance(row, Exception):
                    failed.append((seq, row))
                    continue
            seq.next_logits = row
        if shared > 1:
            self.batched_rows += len(rows)
        return failed

    def _retry_alone(self, seq: Sequence, tok: int, why: Exception) -> torch.Tensor | Exception:
        log.warning("a batched decode forward failed (%s); retrying its rows one by one", error_text(why))
        try:
            return self.batch.step(self.model, self.cache_arg, [(seq, tok)], 1, self.device,
                                   prepare=self._adapter_args)[0]
        except Exception as exc:
            return exc

    def _adapter_args(self, rows: list[Sequence]) -> dict:
        """Ready the weights for one forward over `rows` as the scheduler's rule says: one version
        -> activate it; rows on several -> PEFT's mixed-adapter batch (each row gets its own
        version's LoRA delta, the base weights are read once), not one forward per version."""
        weights = forward_weights([seq.request.adapter for seq in rows])
        if not weights.mixed:
            self.activate_adapter(weights.version)
            return {}
        self.mixed_forwards += 1
        if self.adapters is None:
            raise KeyError(f"adapters {sorted(weights.versions)} are not loaded on this server")
        return {"adapter_names": self.adapters.names_for([seq.request.adapter for seq in rows])}
