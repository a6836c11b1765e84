"""What the reward of a reply is computed from (worker/rewards/function.py): the reply's facts,
its user's signals, and the rule for each kind of signal that turns it into a unit component.
Pure: no Redis, Celery or FastAPI."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from worker.rewards import reasons
from worker.rewards.config import RewardConfig
from worker.rewards.quality import QualityScores


@dataclass(frozen=True)
class Signal:
    """One user event about one reply, as the websocket protocol delivers it."""

    kind: str
    value: float | str | None
    ts: float
    user_id: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Signal:
        user_id, extra = str(d.get("user_id") or ""), dict(d.get("extra") or {})
        return cls(str(d["kind"]), d.get("value"), float(d.get("ts") or 0.0), user_id, extra)


@dataclass(frozen=True)
class ReplyFacts:
    """What the server knows about a finished reply."""

    reply_id: str
    text: str
    n_tokens: int
    finish_reason: str  # one of function.FINISH_REASONS
    ended_at: float
    user_id: str = ""
    adapter_version: str = ""
    quality: QualityScores = field(default_factory=QualityScores)   # scores stored with the reply


# ---------------------------------------------------------------------------- helpers


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def _num(v: Any) -> float | None:
    """A finite number from a signal value (int, float or numeric string), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


# ---------------------------------------------------------------------------- user signals
# Each rule gets the signals of its kind (oldest first) and returns (unit, why) or None.

Rule = Callable[[ReplyFacts, list[Signal], RewardConfig, list[str]], "tuple[float, str] | None"]


def _last_valid(sigs: list[Signal], parse, kind: str, notes: list[str]):
    """The last signal whose value parses (a change of mind is a new event), noting bad ones."""
    valid = []
    for s in sigs:
        v = parse(s.value)
        if v is None:
            notes.append(f"{kind} with invalid value {s.value!r}")
        else:
            valid.append((s, v))
    return (valid[-1], len(valid)) if valid else (None, 0)


def _thumbs(facts, sigs, cfg, notes):
    last, n = _last_valid(sigs, _num, "thumbs", notes)
    if last is None:
        return None
    s, v = last
    if v == 0:
        notes.append(f"thumbs withdrawn at {_clock(s.ts)}")
        return None
    of = f", last of {n}" if n > 1 else ""
    return float(_sign(v)), f"last thumbs: {_sign(v):+d} at {_clock(s.ts)}{of}"


def _rating_value(v: Any) -> float | None:
    r = _num(v)
    return r if r is not None and 1 <= r <= 5 else None


def _choose_value(v: Any) -> str | None:
    return v.lower() if isinstance(v, str) and v.lower() in ("chosen", "rejected") else None


def _rating(facts, sigs, cfg, notes):
    last, n = _last_valid(sigs, _rating_value, "rating", notes)
    if last is None:
        return None
    s, r = last
    of = f", last of {n}" if n > 1 else ""
    return (r - 3) / 2, f"last rating: {r:g} at {_clock(s.ts)} -> (r-3)/2{of}"


def _choose(facts, sigs, cfg, notes):
    last, _ = _last_valid(sigs, _choose_value, "choose", notes)
    if last is None:
        return None
    s, v = last
    if v == "chosen":
        return 1.0, f"chosen over the other candidate at {_clock(s.ts)}"
    return -1.0, f"rejected: the other candidate was chosen at {_clock(s.ts)}"


def _copy(facts, sigs, cfg, notes):
    times = f", {len(sigs)} copy events counted once" if len(sigs) > 1 else ""
    return 1.0, f"copied at {_clock(sigs[0].ts)}{times}"


def _regenerate(facts, sigs, cfg, notes):
    return -1.0, f"replaced by a regenerated reply at {_clock(sigs[0].ts)}"


def _continuation(facts, sigs, cfg, notes):
    for s in sigs:
        gap = _num(s.extra.get("gap_s"))
        gap = s.ts - facts.ended_at if gap is None else gap
        window = cfg.continuation_window_s
        if gap <= window:
            return 1.0, f"user wrote again {gap:.0f} s after the reply (window {window:g} s)"
        notes.append(f"continuation {gap:.0f} s after the reply, outside the {window:g} s window")
    return None


def _dwell(facts, sigs, cfg, notes):
    # dwell reports are cumulative visible time, so the largest one is the whole story
    visible = [v for s in sigs if (v := _num(s.value)) is not None and v >= 0]
    if len(visible) < len(sigs):
        notes.append(f"{len(sigs) - len(visible)} dwell event(s) with invalid visible_ms")
    words = len(facts.text.split())
    if not visible or words == 0:
        if visible:
            notes.append("dwell on an empty reply (no reading time to compare with)")
        return None
    ms = max(visible)
    expected_ms = words / cfg.reading_wpm * 60_000.0
    unit = -1.0 if ms == 0 else max(-1.0, min(1.0, math.log2(ms / expected_ms)))
    return unit, (
        f"visible {ms / 1000:.1f} s vs expected {expected_ms / 1000:.1f} s "
        f"({words} words at {cfg.reading_wpm:g} wpm): clipped log2 ratio {unit:+.2f}"
    )


def _abandon(facts, sigs, cfg, notes):
    return -1.0, "session went idle with no action on the reply"


USER_RULES: dict[str, Rule] = {
    "thumbs": _thumbs,
    "rating": _rating,
    "choose": _choose,
    "copy": _copy,
    "regenerate": _regenerate,
    "continuation": _continuation,
    "dwell": _dwell,
    "sibling": reasons.sibling,
    "edited": reasons.edited,
    "abandon": _abandon,  # last: it is void when an action above counted
}
KNOWN_KINDS = frozenset(USER_RULES) | {reasons.REASONS}
