"""Preference pairs for DPO from what users did: a chosen candidate beats the others; a
regenerated reply loses to its replacement when the user kept the replacement. Pure."""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.rewards.user_signals import Signal, _num


@dataclass(frozen=True)
class PreferencePair:
    chosen_id: str
    rejected_id: str
    source: str  # "choose" | "regenerate"


def is_kept(signals: Iterable[Signal | Mapping]) -> bool:
    """Did the user keep a reply: a positive signal (last thumbs +1, last rating >= 4, a copy,
    last choose "chosen", last sibling "preferred") and no negative one (last thumbs -1, last
    rating <= 2, "rejected", sibling "other", a regenerate, an edited question)?"""
    last: dict[str, Any] = {}
    copied = regenerated = False
    signals = (s if isinstance(s, Signal) else Signal.from_dict(s) for s in signals)
    for s in sorted(signals, key=lambda s: s.ts):
        if s.kind in ("thumbs", "rating") and _num(s.value) is not None:
            last[s.kind] = _num(s.value)
        elif s.kind in ("choose", "sibling") and isinstance(s.value, str):
            last[s.kind] = s.value.lower()
        copied |= s.kind == "copy"
        regenerated |= s.kind in ("regenerate", "edited")
    thumbs, rating, choose, sibling = last.get("thumbs", 0), last.get("rating", 3), last.get("choose"), last.get("sibling")
    positive = thumbs > 0 or rating >= 4 or copied or choose == "chosen" or sibling == "preferred"
    negative = thumbs < 0 or rating <= 2 or choose == "rejected" or sibling == "other" or regenerated
    return positive and not negative


def choices_from_outcome(candidates: Sequence[str], chosen_id: str) -> list[tuple[str, str]]:
    """(chosen, rejected) for one choose event: the picked candidate beats every other one."""
    if chosen_id not in candidates:
        return []
    return [(chosen_id, other) for other in candidates if other != chosen_id]


def preference_pairs(
    choices: Iterable[tuple[str, str]] = (),
    regenerations: Iterable[tuple[str, str]] = (),
    kept: Collection[str] = frozenset(),
    derived: Iterable[tuple[str, str, str]] = (),
    unsafe: Collection[str] = frozenset(),
) -> list[PreferencePair]:
    """Preference pairs for DPO, all for a shared prompt.

    choices:        (chosen_id, rejected_id) from choose events (see choices_from_outcome);
    regenerations:  (old_id, new_id), new_id replaced old_id;
    kept:           reply ids the user kept (see is_kept);
    derived:        (chosen_id, rejected_id, source) pairs derived before (the stored pairs stream).
    unsafe:         reply ids that were vetoed (unsafe level >= RewardConfig.safety_threshold).
    A regeneration gives (chosen=new, rejected=old) only when new is kept. Pairs are unique;
    when two sources disagree about the same two replies, the first (choose) wins. An unsafe
    reply is never the chosen side, whatever the user picked (the pair is dropped).
    """
    pairs: list[PreferencePair] = []
    seen: set[frozenset[str]] = set()

    def add(chosen: str, rejected: str, source: str) -> None:
        key = frozenset((chosen, rejected))
        if chosen != rejected and key not in seen and chosen not in unsafe:
            seen.add(key)
            pairs.append(PreferencePair(chosen, rejected, source))

    for chosen, rejected in choices:
        add(chosen, rejected, "choose")
    for old, new in regenerations:
        if new in kept:
            add(new, old, "regenerate")
    for chosen, rejected, source in derived:
        add(chosen, rejected, source)
    return pairs
