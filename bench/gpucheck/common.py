"""What every section shares: the run's context (device, dtype, tokenizer, size, time left) and
the record of one pass/fail check."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch


@dataclass
class Check:
    name: str
    ok: bool
    detail: dict = field(default_factory=dict)
    dtype: str = ""
    seconds: float = 0.0


@dataclass
class Context:
    device: torch.device
    dtype: torch.dtype                 # serving, learner and hot swap (the correctness checks run both)
    tokenizer: object
    quick: bool
    deadline: float                    # time.monotonic() by which the run must end
    models: tuple[str, ...]            # serving / learner models
    swap_model: str

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2 ** 30, 3) if self.cuda else None


def pct(xs: list[float], q: float) -> float | None:
    """q-th percentile (0..100), nearest rank; None for no data."""
    if not xs:
        return None
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def rnd(x, n: int = 4):
    return None if x is None else round(x, n)
