"""The reward rules of what people do in a conversation beyond rating a reply: which of several
answers to one message they preferred (siblings), the question they edited, and the reason tags
of their feedback. Pure; function.py calls these (a signal is anything with kind, value, ts and
extra, as worker.rewards.user_signals.Signal).

  sibling     +1 / -1  the user went on from, copied or rated up this answer (+) or another answer
                       to the same message (-): value "preferred" / "other", extra {other, how}
  edited      -1       the user edited the question this reply answered and sent it again
  tag_<name>  +1 / -1  each reason tag of the user's last tagged feedback, with its polarity
                       (core/feedback_tags.py); the tag `unsafe` moves the safety guard instead
"""
from __future__ import annotations

import time

from core import feedback_tags

REASONS = "reasons"  # a feedback event that carries only reason tags and a comment
SIBLING_VALUES = ("preferred", "other")


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def sibling(facts, sigs, cfg, notes):
    """The last sibling signal counts: the user may change their mind between answers."""
    valid = [s for s in sigs if isinstance(s.value, str) and s.value.lower() in SIBLING_VALUES]
    if len(valid) < len(sigs):
        notes.append(f"{len(sigs) - len(valid)} sibling signal(s) with a value other than preferred/other")
    if not valid:
        return None
    s = valid[-1]
    how, other = s.extra.get("how") or "chose it", s.extra.get("other") or "?"
    if s.value.lower() == "preferred":
        return 1.0, f"preferred over its sibling {other} (the user {how}) at {_clock(s.ts)}"
    return -1.0, f"its sibling {other} was preferred (the user {how}) at {_clock(s.ts)}"


def edited(facts, sigs, cfg, notes):
    return -1.0, f"the user edited the question it answered and asked again at {_clock(sigs[0].ts)}"


def last_tags(sigs) -> tuple[object | None, tuple[str, ...]]:
    """The user's last feedback that carries reason tags (a revised form replaces the earlier
    one) and its known tags (the server validated them; unknown ones are skipped)."""
    for s in reversed(sigs):
        tags = s.extra.get("tags")
        if isinstance(tags, list) and tags:
            return s, tuple(t for t in tags if t in feedback_tags.BY_NAME)
    return None, ()


def tag_components(sigs, cfg, user_weight: float) -> tuple[dict, dict, object | None]:
    """(components, why, report): tag_<name> = weight x polarity x user weight for the last tagged
    feedback, and that feedback when it reports the reply unsafe (the safety guard's input)."""
    s, tags = last_tags(sigs)
    comps, details = {}, {}
    for tag in tags:
        if tag == feedback_tags.UNSAFE:
            continue
        weight = getattr(cfg, f"tag_{tag}_weight")
        if weight:
            meta = feedback_tags.BY_NAME[tag]
            comps[f"tag_{tag}"] = weight * meta.polarity * user_weight
            details[f"tag_{tag}"] = f"reason '{meta.label}' given at {_clock(s.ts)}"
    return comps, details, (s if feedback_tags.UNSAFE in tags else None)


def unsafe_report(report, hits: list[str]) -> str:
    words = f" (safety words: {', '.join(hits)})" if hits else ""
    return f"the user reported it unsafe or harmful at {_clock(report.ts)}{words}"
