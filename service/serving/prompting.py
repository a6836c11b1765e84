"""Building the prompt from a session's history within the context budget. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Prompt:
    messages: list[dict]
    n_tokens: int
    dropped_turns: int   # oldest turns left out to fit the budget

    @property
    def truncated(self) -> bool:
        return self.dropped_turns > 0


def build_prompt(system: str, turns: list[tuple[str, str]], user_text: str,
                 count_tokens: Callable[[list[dict]], int], budget: int) -> Prompt:
    """Drop the oldest (user, assistant) turns until prompt tokens fit `budget`.

    The system message and the new user message are always kept; if even they do
    not fit, the prompt is returned as is and the caller decides (it refuses).
    """
    head = [{"role": "system", "content": system}] if system else []
    tail = [{"role": "user", "content": user_text}]

    def attempt(dropped: int) -> Prompt:
        body = [m for u, a in turns[dropped:] for m in ({"role": "user", "content": u},
                                                          {"role": "assistant", "content": a})]
        messages = head + body + tail
        return Prompt(messages, count_tokens(messages), dropped)

    # Fewer turns never need more tokens, so binary-search the fewest turns to drop:
    # O(log n) tokenizations instead of one per dropped turn on long conversations.
    best = attempt(0)
    if best.n_tokens <= budget:
        return best
    lo, hi = 1, len(turns)          # invariant: dropping hi fits, unless nothing does
    last = attempt(hi)
    if last.n_tokens > budget:
        return last
    while lo < hi:
        mid = (lo + hi) // 2
        p = attempt(mid)
        if p.n_tokens <= budget:
            hi, last = mid, p
        else:
            lo = mid + 1
    return last if last.dropped_turns == hi else attempt(hi)


def fit_messages(messages: list[dict], count_tokens: Callable[[list[dict]], int], budget: int) -> Prompt:
    """Same rule for OpenAI-style message lists: keep system messages and the last
    message, drop the oldest others first."""
    system = [m for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    for dropped in range(max(len(rest), 1)):
        candidate = system + rest[dropped:]
        n = count_tokens(candidate)
        if n <= budget:
            return Prompt(candidate, n, dropped)
    return Prompt(candidate, n, dropped)
