"""The reward of one reply: a pure function of the reply and what its user did with it.

    reward = clip( u * (sum of user-signal components) + (sum of guard components), -1, 1 )

    u = the user's weight: 1.0, or anomaly_weight for a user whose votes look automated.
    Every component is  weight x unit signal  (weights in RewardConfig / reward_default.toml);
    only components that fired are summed. With the default weights:

    user signals (the user's own signals on this reply; signals of other users are ignored)
      thumbs        +1 / -1        x 1.0   the user's LAST thumbs counts (0 = withdrawn)
      rating        (r - 3) / 2    x 1.0   the user's LAST rating r in 1..5 counts
      choose        +1 / -1        x 1.0   chosen over the other candidate / the other was chosen
      copy          +1             x 0.5   counted once, however often copied
      regenerate    -1             x 0.5   the user replaced this reply by regenerating
      continuation  +1             x 0.3   the user wrote again within continuation_window_s (600 s)
      dwell         clip(log2(visible / expected), -1, 1)   x 0.1
                    expected = words / reading_wpm (230) minutes; the longest visible time counts
      abandon       -1             x 0.1   session went idle with no action (void if an action counted)
      sibling, edited, tag_<name>: what people do in a conversation and why (worker/rewards/reasons.py)
    guards (automatic, for what users cannot see at scale; never scaled by u)
      repetition    -1             x 0.5   fraction of repeated word 3-grams > 0.3
      empty         -1             x 1.0   the reply is empty or whitespace
      truncated     -1             x 0.3   non-empty reply with finish_reason "length" or "error"
    quality (P[unsafe] scored by the server at the reply's end; worker/rewards/quality.py; never scaled by u)
      safety        -level         x 1.0   level = P[unsafe] of the safety scorer, or 1 when the user tagged
                                           it `unsafe` or a safety word appears (list empty by default)
      relevance     clip(z / 2, -1, 1)  x 0.2   z: PMI of the reply given the prompt, against the model's own
      fluency       clip(z / 2, -1, 1)  x 0.1   z: the reply's mean token log-prob, likewise
    veto: level >= safety_threshold (0.5) caps the total at the safety penalty, whatever the thumbs

A reward is final wait_window_s (600 s) after the reply ended, or at session end. A reply with
no user signal (guards alone do not count) is excluded from training, or gets default_reward
when no_signal_policy = "default". A choose, or a regenerate whose new reply the user then kept
(thumbs up, rating >= 4, copy or chosen, and no negative signal), also yields a preference pair
(chosen = kept reply, rejected = the other). No user may fill more than max_user_share (25 %)
of one training batch (each keeps their earliest samples; with too few users for that, the most
even split possible, at least one sample each), and a user whose last anomaly_min_events (5) votes all have the same
sign and all came within anomaly_fast_s (1 s) of the reply ending gets weight anomaly_weight
(0.25).

No Redis, Celery or FastAPI here: callers pass plain data (``Signal``/``ReplyFacts`` or dicts).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from core import feedback_tags
from worker.rewards import reasons
from worker.rewards.config import RewardConfig
from worker.rewards.quality import (
    QUALITY_COMPONENTS,
    find_safety_words,  # noqa: F401 (re-exported: the safety word list)
    quality_components,
    veto,
)
from worker.rewards.user_signals import KNOWN_KINDS, USER_RULES, ReplyFacts, Signal

TAG_COMPONENTS = tuple(f"tag_{t.name}" for t in feedback_tags.TAGS if t.name != feedback_tags.UNSAFE)
USER_COMPONENTS = ("thumbs", "rating", "choose", "copy", "regenerate", "continuation", "dwell", "abandon",
                   "sibling", "edited") + TAG_COMPONENTS
GUARD_COMPONENTS = ("repetition", "empty", "truncated", "safety", *QUALITY_COMPONENTS)
# explicit actions on a reply; any of them counting voids "abandon" (which means "no action")
ACTION_COMPONENTS = frozenset(USER_COMPONENTS) - {"dwell", "abandon"}
ACTION_KINDS = ACTION_COMPONENTS | {reasons.REASONS}  # event kinds that mean the user acted on the reply
FINISH_REASONS = ("stop", "length", "cancelled", "error")
CUT_OFF = frozenset({"length", "error"})  # "cancelled" is the user's stop, not the model's fault


@dataclass(frozen=True)
class RewardBreakdown:
    components: dict[str, float]  # only components that fired, already weighted
    total: float  # raw_sum clipped to [-1, 1]
    raw_sum: float
    has_signal: bool  # any user-signal component fired (guards do not count)
    user_weight: float = 1.0
    details: dict[str, str] = field(default_factory=dict)  # component -> why it fired
    notes: tuple[str, ...] = ()  # signals that were ignored, and why
    unsafe: float | None = None  # the reply's unsafe level (None: no safety source said anything)
    veto: str | None = None  # why the total was capped (None: not vetoed)

    @property
    def vetoed(self) -> bool:
        return self.veto is not None

    def explain(self) -> list[str]:
        """Human-readable lines, one per component, then notes and the total."""
        lines = []
        for name, value in self.components.items():
            why = self.details.get(name, "")
            if name in USER_COMPONENTS and self.user_weight != 1.0:
                why += f"; x user weight {self.user_weight:.2f}"
            lines.append(f"{name:<12}  {value:+.3f}  ({why})")
        lines += [f"ignored: {note}" for note in self.notes]
        if self.user_weight != 1.0:
            lines.append(f"user weight {self.user_weight:.2f} scales user-signal components, not guards")
        if not self.has_signal:
            lines.append("no user signal: excluded or default_reward, per no_signal_policy")
        if self.veto:
            lines.append(self.veto)
        if self.total != max(-1.0, min(1.0, self.raw_sum)):
            lines.append(f"total         {self.total:+.3f}  (vetoed; sum of {len(self.components)} components "
                         f"{self.raw_sum:+.3f})")
        elif self.total != self.raw_sum:
            lines.append(f"total clipped to [-1, 1]: {self.raw_sum:+.3f} -> {self.total:+.3f}")
        else:
            lines.append(f"total         {self.total:+.3f}  (sum of {len(self.components)} components)")
        return lines

    def as_dict(self) -> dict:
        """JSON-able summary for the reward ledger."""
        keys = ("components", "total", "raw_sum", "has_signal", "user_weight", "unsafe", "vetoed")
        return {k: dict(v) if isinstance(v := getattr(self, k), dict) else v for k in keys}


# ---------------------------------------------------------------------------- helpers

_WORD = re.compile(r"\w+")


def repeated_ngram_fraction(text: str, n: int) -> float:
    """Share of the word n-grams that repeat an earlier one: 1 - unique / total (0 if none)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _own_signals(facts: ReplyFacts, signals: Iterable[Signal | Mapping], notes: list[str]) -> list[Signal]:
    """The reply's user's signals, oldest first (stable, so equal times keep arrival order)."""
    mine, others, unknown = [], 0, Counter()
    for raw in signals:
        s = raw if isinstance(raw, Signal) else Signal.from_dict(raw)
        if s.kind not in KNOWN_KINDS:
            unknown[s.kind] += 1
        elif facts.user_id and s.user_id and s.user_id != facts.user_id:
            others += 1  # a reply is rewarded by the person it answered; others cannot steer it
        else:
            mine.append(s)
    if others:
        notes.append(f"{others} signal(s) from users other than {facts.user_id!r}")
    notes += [f"{n} signal(s) of unknown kind {k!r}" for k, n in sorted(unknown.items())]
    return sorted(mine, key=lambda s: s.ts)


# ---------------------------------------------------------------------------- guards


def _guards(facts: ReplyFacts, cfg: RewardConfig) -> dict[str, tuple[float, str]]:
    fired: dict[str, tuple[float, str]] = {}
    empty = not facts.text.strip()
    if empty:
        fired["empty"] = (-1.0, "reply is empty")
    elif facts.finish_reason in CUT_OFF:  # an empty reply is already penalized as empty
        fired["truncated"] = (-1.0, f"finish_reason {facts.finish_reason!r}: reply was cut off")
    frac = repeated_ngram_fraction(facts.text, cfg.repetition_n)
    if frac > cfg.repetition_threshold:
        fired["repetition"] = (
            -1.0,
            f"{frac:.0%} of word {cfg.repetition_n}-grams repeated (threshold {cfg.repetition_threshold:.0%})",
        )
    return fired


# ---------------------------------------------------------------------------- the reward


def compute_reward(
    facts: ReplyFacts,
    signals: Iterable[Signal | Mapping],
    cfg: RewardConfig,
    user_weight: float = 1.0,
) -> RewardBreakdown:
    """The reward of one reply (formula in the module docstring). Pure and deterministic."""
    if not (math.isfinite(user_weight) and user_weight >= 0):
        raise ValueError(f"user_weight must be a finite number >= 0; got {user_weight!r}")
    notes: list[str] = []
    by_kind: dict[str, list[Signal]] = {k: [] for k in KNOWN_KINDS}
    own = _own_signals(facts, signals, notes)
    for s in own:
        by_kind[s.kind].append(s)

    components: dict[str, float] = {}
    details: dict[str, str] = {}
    tag_comps, tag_details, reported = reasons.tag_components(own, cfg, user_weight)
    for name, rule in USER_RULES.items():
        weight = getattr(cfg, f"{name}_weight")
        if not by_kind[name] or weight == 0:  # weight 0 switches a component off entirely
            continue
        if name == "abandon" and (ACTION_COMPONENTS & (components.keys() | tag_comps.keys()) or reported):
            notes.append("abandon, because the user did act on the reply")
            continue
        fired = rule(facts, by_kind[name], cfg, notes)
        if fired is not None:
            components[name] = weight * fired[0] * user_weight
            details[name] = fired[1]
    components.update(tag_comps)
    details.update(tag_details)
    # a report of harm is the user's signal too, though it moves the (unscaled) safety guard
    has_signal = bool(components) or reported is not None

    report = None if reported is None else reasons.unsafe_report(reported, [])
    quality, level = quality_components(facts.text, facts.quality, cfg, report)
    automatic = {**_guards(facts, cfg), **quality}
    for name in GUARD_COMPONENTS:
        weight = getattr(cfg, f"{name}_weight")
        if name in automatic and weight != 0:
            components[name] = weight * automatic[name][0]
            details[name] = automatic[name][1]

    raw_sum = sum(components.values())
    total, vetoed = veto(max(-1.0, min(1.0, raw_sum)), level, components.get("safety", 0.0), cfg)
    return RewardBreakdown(components, total, raw_sum, has_signal, user_weight, details, tuple(notes), level, vetoed)


def is_final(ended_at: float, now: float, cfg: RewardConfig, session_ended: bool = False) -> bool:
    """A reward is final once the wait window has passed since the reply ended, or the session ended."""
    return session_ended or now - ended_at >= cfg.wait_window_s


def finalize_state(has_signal: bool, cfg: RewardConfig, total: float | None = None) -> tuple[str, float | None]:
    """Ledger state and reward of a final reply.

    ("rewarded", total) with a user signal (total as passed, None if not passed);
    ("defaulted", cfg.default_reward) without one when no_signal_policy == "default";
    ("unscored", None) without one when no_signal_policy == "model";
    ("excluded", None) otherwise: the reply is left out of training.
    """
    if has_signal:
        return "rewarded", total
    if cfg.no_signal_policy == "default":
        return "defaulted", cfg.default_reward
    if cfg.no_signal_policy == "model":
        return "unscored", None  # the learner's reward model scores it (learner/dataset.py)
    return "excluded", None
