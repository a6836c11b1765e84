"""Token sampling that records the behavior log-probability.

The learner's importance ratios need log pi_behavior(token), i.e. the probability
under the distribution the token was *actually* drawn from: after temperature and
top-p. Pure torch; no model here.

`sample_batch` draws the next token of every row of a decode step in one batched
computation on the logits' device (a GPU never waits on the host per row); each row
keeps its own seeded generator, so a reply does not depend on what it was batched with.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

MIN_TEMPERATURE = 1e-3   # below this logits / T overflows float32: use 0 (greedy) instead
MAX_TEMPERATURE = 100.0
MAX_NEW_TOKENS = 1 << 20
MAX_SEED = (1 << 63) - 1


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self):
        # Values come from users (JSON: bools, strings, NaN, 10**400...): check types before ranges.
        t = self.temperature
        if not _is_number(t) or not math.isfinite(t) or not (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
            raise ValueError(f"temperature must be 0 (greedy) or a number in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE:g}], "
                             f"got {t!r}")
        p = self.top_p
        if not _is_number(p) or not math.isfinite(p) or not 0 < p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {p!r}")
        if not _is_int(self.max_new_tokens) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS}], got {self.max_new_tokens!r}")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, 2**63 - 1], got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return asdict(self)


# The nucleus is almost always far smaller than the vocabulary: on a CPU look for it among
# the top candidates first (a top-k is ~10x cheaper than sorting 49k logits) and sort
# everything only when those candidates do not reach top_p. Same result either way. On a
# GPU the check would cost a host sync per step, and a full sort is cheap there: sort.
_CANDIDATES = 256


def _nucleus(logp: torch.Tensor, top_p) -> tuple[torch.Tensor, torch.Tensor]:
    """logp: [..., V], top_p: float or [...] -> (ids [..., k], renormalized log-probs [..., k];
    -inf outside the nucleus)."""
    top_p = torch.as_tensor(top_p, dtype=logp.dtype, device=logp.device)
    if top_p.dim():
        top_p = top_p[..., None]
    k = min(_CANDIDATES, logp.shape[-1])
    if logp.device.type == "cpu":
        top_lp, top_ids = logp.topk(k, dim=-1)                  # sorted, descending
        if k < logp.shape[-1] and bool((top_lp.exp().sum(-1, keepdim=True) < top_p).any()):
            top_lp, top_ids = logp.sort(dim=-1, descending=True)
    else:
        top_lp, top_ids = logp.sort(dim=-1, descending=True)
    probs = top_lp.exp()
    # keep a token when the mass *before* it is below top_p (the first is always kept)
    keep = (probs.cumsum(-1) - probs) < top_p
    kept = top_lp.masked_fill(~keep, float("-inf"))
    return top_ids, kept - torch.logsumexp(kept, dim=-1, keepdim=True)


def processed_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Log-probabilities of the sampling distribution.

    logits: [..., V] raw model logits -> [..., V] log-probs after temperature and top-p
    (tokens outside the nucleus get -inf). Greedy is a point mass on the argmax.
    """
    logits = logits.float()
    if params.greedy:
        out = torch.full_like(logits, float("-inf"))
        return out.scatter(-1, logits.argmax(-1, keepdim=True), 0.0)
    logp = torch.log_softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        ids, lp = _nucleus(logp, params.top_p)
        logp = torch.full_like(logp, float("-inf")).scatter(-1, ids, lp)
    return logp


def _draw(logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: logp [B, K] (rows sum to 1 in prob), u [B] uniform in [0, 1) -> [B, 1]
    column indices. The first column whose cumulative mass exceeds u * total: never a
    zero-probability column."""
    cdf = logp.exp().double().cumsum(-1)                              # [B, K]
    target = (u.double() * cdf[:, -1])[:, None]                       # [B, 1]
    return torch.searchsorted(cdf, target, right=True).clamp_(max=logp.shape[-1] - 1)


def _uniforms(generators: list, device) -> torch.Tensor:
    """One uniform per row from the row's own generator (on the logits' device: no host sync)."""
    return torch.stack([torch.rand((), generator=g, device=device) for g in generators])


def sample_batch(logits: torch.Tensor, params: list[SamplingParams],
                 generators: list[torch.Generator | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [B, V] -> (token ids [B] long, behavior log-probs [B] float32), on logits' device.

    No host synchronisation here: the caller reads both results once per step. Rows are
    grouped by kind (greedy, full vocabulary, nucleus); each group is one batched computation.
    The log-prob of a row's token equals processed_logprobs(row, its params)[token]."""
    logits = logits.float()
    n, dev = logits.shape[0], logits.device
    tokens = torch.zeros(n, dtype=torch.long, device=dev)
    logprobs = torch.zeros(n, device=dev)
    groups: dict[str, list[int]] = {"greedy": [], "full": [], "nucleus": []}
    for i, p in enumerate(params):
        groups["greedy" if p.greedy else "full" if p.top_p >= 1.0 else "nucleus"].append(i)

    def rows(idx):
        return slice(None) if len(idx) == n else torch.tensor(idx, device=dev)

    if groups["greedy"]:
        sel = rows(groups["greedy"])
        tokens[sel] = logits[sel].argmax(-1)                           # log-prob 0: a point mass
    for kind in ("full", "nucleus"):
        idx = groups[kind]
        if not idx:
            continue
        sel = rows(idx)
        temps = torch.tensor([params[i].temperature for i in idx], device=dev)[:, None]
        logp = torch.log_softmax(logits[sel] / temps, dim=-1)          # [b, V]
        u = _uniforms([generators[i] for i in idx], dev)               # [b]
        if kind == "full":
            col = _draw(logp, u)                                       # [b, 1]
            tokens[sel] = col[:, 0]
            logprobs[sel] = logp.gather(-1, col)[:, 0]
        else:
            ids, lp = _nucleus(logp, torch.tensor([params[i].top_p for i in idx], device=dev))
            # Draw over the nucleus in vocabulary order, not probability order: float noise
            # that swaps two near-equal candidates then cannot change which token u lands on.
            order = ids.argsort(-1)
            ids, lp = ids.gather(-1, order), lp.gather(-1, order)
            col = _draw(lp, u)
            tokens[sel] = ids.gather(-1, col)[:, 0]
            logprobs[sel] = lp.gather(-1, col)[:, 0]
    return tokens, logprobs


def sample_token(logits: torch.Tensor, params: SamplingParams,
                 generator: torch.Generator | None) -> tuple[int, float]:
    """logits: [V] -> (token id, behavior log-prob of that token); one row of sample_batch."""
    tokens, logprobs = sample_batch(logits[None], [params], [generator])
    return int(tokens[0]), float(logprobs[0])


def behavior_logprobs(logits: torch.Tensor, tokens: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Re-computation for a whole reply. logits: [T, V] (the positions predicting each
    reply token), tokens: [T] -> [T] behavior log-probs."""
    return processed_logprobs(logits, params).gather(-1, tokens[:, None]).squeeze(-1)
