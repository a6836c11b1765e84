"""Token sampling that records the behavior log-probability.

The learner's importance ratios need log pi_behavior(token), i.e. the probability
under the distribution the token was *actually* drawn from: after temperature and
top-p. Pure torch; no model here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return asdict(self)


# The nucleus is almost always far smaller than the vocabulary: look for it among the top
# candidates first (a top-k is ~10x cheaper than sorting 49k logits on a CPU) and sort
# everything only when those candidates do not reach top_p. Same result either way.
_CANDIDATES = 256


def _nucleus(logp: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logp: [..., V] -> (ids [..., k], renormalized log-probs [..., k]; -inf outside the nucleus)."""
    k = min(_CANDIDATES, logp.shape[-1])
    top_lp, top_ids = logp.topk(k, dim=-1)                      # sorted, descending
    if k < logp.shape[-1] and bool((top_lp.exp().sum(-1) < top_p).any()):
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


def sample_token(logits: torch.Tensor, params: SamplingParams,
                 generator: torch.Generator | None) -> tuple[int, float]:
    """logits: [V] -> (token id, behavior log-prob of that token)."""
    logits = logits.float()
    if params.greedy:
        return int(logits.argmax()), 0.0
    logp = torch.log_softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        ids, lp = _nucleus(logp, params.top_p)                 # [k], [k]
        j = int(torch.multinomial(lp.exp(), 1, generator=generator))
        return int(ids[j]), float(lp[j])
    tok = int(torch.multinomial(logp.exp(), 1, generator=generator))
    return tok, float(logp[tok])


def behavior_logprobs(logits: torch.Tensor, tokens: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Re-computation for a whole reply. logits: [T, V] (the positions predicting each
    reply token), tokens: [T] -> [T] behavior log-probs."""
    return processed_logprobs(logits, params).gather(-1, tokens[:, None]).squeeze(-1)
