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
        sorted_lp, order = logp.sort(dim=-1, descending=True)
        cum = sorted_lp.exp().cumsum(-1)
        # keep a token when the mass *before* it is below top_p (the first is always kept)
        keep_sorted = (cum - sorted_lp.exp()) < params.top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        logp = torch.log_softmax(logp.masked_fill(~keep, float("-inf")), dim=-1)
    return logp


def sample_token(logits: torch.Tensor, params: SamplingParams,
                 generator: torch.Generator | None) -> tuple[int, float]:
    """logits: [V] -> (token id, behavior log-prob of that token)."""
    logp = processed_logprobs(logits, params)
    if params.greedy:
        tok = int(logp.argmax())
    else:
        tok = int(torch.multinomial(logp.exp(), 1, generator=generator))
    return tok, float(logp[tok])


def behavior_logprobs(logits: torch.Tensor, tokens: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Re-computation for a whole reply. logits: [T, V] (the positions predicting each
    reply token), tokens: [T] -> [T] behavior log-probs."""
    return processed_logprobs(logits, params).gather(-1, tokens[:, None]).squeeze(-1)
