"""The local engine's scheduling rules, as pure functions of plain data: no model, no torch,
no thread. The engine (core.py) asks them what to do."""
from __future__ import annotations


def prefill_end(start: int, total: int, chunk: int) -> int:
    """Where the prefill forward starting at `start` ends: `chunk` tokens, or all the rest when
    at most a quarter chunk would be left. Every forward has a fixed cost (the weights are read
    once per pass): 155 new tokens of a turn as 128 + 27 paid it twice, now one pass of 155."""
    end = start + chunk
    return total if total - end <= chunk // 4 else end
