"""DriftResult, the verdict that every drift detector (worker/ops/drift.py) and the version
comparison (worker/ops/compare.py) return, and the argument checks they share. Pure code."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DriftResult:
    """One detector verdict; `evidence` is JSON-serializable for the ops page and the ledger."""

    detector: str
    metric: str
    version: str | None
    alarm: bool
    direction: str | None  # "drop" | "rise" | None
    index: int | None  # event index (0-based, since construction/reset) where the alarm fired
    statistic: float
    threshold: float
    evidence: dict[str, Any]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- validation helpers


def _invalid(owner: str, name: str, value: Any, rule: str) -> ValueError:
    return ValueError(f"{owner}.{name}={value!r} is invalid: it must be {rule}")


def _require_number(owner: str, name: str, value: Any) -> float:
    # bool is an int subclass; True as a threshold is always a mistake
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _invalid(owner, name, value, "a finite number")
    return float(value)


def _require_int(owner: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _invalid(owner, name, value, f"an integer >= {minimum}")


def _finite_value(detector: str, x: Any) -> float:
    # one NaN would poison the running sums forever, so reject it at the door
    try:
        value = float(x)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{detector}.update(x={x!r}): x must be a finite number") from None
    if not math.isfinite(value):
        raise ValueError(f"{detector}.update(x={x!r}): x must be a finite number")
    return value
