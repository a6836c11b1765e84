"""Rewards of texts given on the command line (`rewardloop rewards score`): one JSON line in, the
same reward the worker would compute out. Pure: parsing, validation and compute_reward.

A line is a JSON object:

    {"prompt": "What is 2+2?", "reply": "4.", "signals": {"thumbs": 1, "copy": true}}

    prompt, reply    strings (required; an empty reply gets the `empty` guard)
    signals          optional object; each key is named like the reward component it feeds (SIGNALS)
    finish_reason    optional: stop (default), length, cancelled or error (length/error: `truncated`)
    id               optional: any string or number, copied to the output

Each signal becomes the event the chat page would have sent, from the reply's own user, so
compute_reward reads it exactly as the worker reads the ledger; the quality scores come in as the
reply record's `quality` mapping (core/reply_scoring.py writes it). A line that breaks a rule
raises LineError naming the line, the field and what to write instead.
"""
from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core import feedback_tags
from worker.rewards.config import RewardConfig
from worker.rewards.function import FINISH_REASONS, GUARD_COMPONENTS, ReplyFacts, RewardBreakdown, compute_reward
from worker.rewards.quality import QualityScores

LINE_KEYS = ("prompt", "reply", "signals", "finish_reason", "id")
TAG_SIGNALS = tuple(f"tag_{t.name}" for t in feedback_tags.TAGS if t.name != feedback_tags.UNSAFE)
SIGNAL_HELP = {
    "thumbs": "1 (up), -1 (down) or 0 (withdrawn)",
    "rating": "a number of stars from 1 to 5",
    "choose": 'true / "chosen" (picked over the other candidate) or false / "rejected"',
    "copy": "true (the user copied the reply)",
    "regenerate": "true (the user replaced it by regenerating)",
    "continuation": "true (the user wrote again right after), or the seconds after the reply that they did",
    "dwell": "milliseconds the reply was visible (>= 0)",
    "abandon": "true (the session went idle with no action on the reply)",
    "sibling": 'true / "preferred" (chosen among answers to one message) or false / "other"',
    "edited": "true (the user edited the question and asked again)",
    "safety": "true (the user reported the reply unsafe: their 'unsafe' reason tag)",
    **{name: f"true (the user gave the reason tag '{name[4:]}')" for name in TAG_SIGNALS},
}
COMPUTED = {"relevance": "it is computed from the prompt and reply", "fluency": "it is computed from the reply",
            "repetition": "it is computed from the reply", "empty": "an empty \"reply\" gets it",
            "truncated": 'give "finish_reason": "length" on the line instead'}


class LineError(ValueError):
    """A line that cannot be scored: `line` is its number (1-based), the message says what to fix."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class ScoreLine:
    line: int
    prompt: str
    reply: str
    signals: dict = field(default_factory=dict)   # validated: signal name -> value
    finish_reason: str = "stop"
    id: Any = None


# --------------------------------------------------------------------------- values
def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _flag(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _thumbs(v):
    return int(v) if _number(v) is not None and v in (1, -1, 0) else None


def _rating(v):
    n = _number(v)
    return n if n is not None and 1 <= n <= 5 else None


def _named(true: str, false: str) -> Callable[[Any], str | None]:
    def parse(v):
        if isinstance(v, bool):
            return true if v else false
        return v.lower() if isinstance(v, str) and v.lower() in (true, false) else None
    return parse


def _continuation(v):
    if v is True or v is False:
        return v
    n = _number(v)
    return n if n is not None and n >= 0 else None


def _dwell(v):
    n = _number(v)
    return n if n is not None and n >= 0 else None


PARSERS: dict[str, Callable[[Any], Any]] = {
    "thumbs": _thumbs, "rating": _rating, "choose": _named("chosen", "rejected"), "copy": _flag,
    "regenerate": _flag, "continuation": _continuation, "dwell": _dwell, "abandon": _flag,
    "sibling": _named("preferred", "other"), "edited": _flag, "safety": _flag, **dict.fromkeys(TAG_SIGNALS, _flag),
}
SIGNALS = tuple(PARSERS)


def _check_signals(raw: Any, line: int) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise LineError(line, f'"signals" must be an object such as {{"thumbs": 1, "copy": true}}, got {_show(raw)}')
    out = {}
    for name, value in raw.items():
        if name not in PARSERS:
            if name in COMPUTED or name in GUARD_COMPONENTS:
                raise LineError(line, f"signal {name!r} cannot be given: {COMPUTED.get(name, 'it is computed')}")
            near = difflib.get_close_matches(name, SIGNALS, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise LineError(line, f"unknown signal {name!r}: {hint}signals are named like the reward's components: "
                                  f"{', '.join(SIGNALS)}")
        parsed = PARSERS[name](value)
        if parsed is None:
            raise LineError(line, f"signal {name!r} must be {SIGNAL_HELP[name]}; got {_show(value)}")
        out[name] = parsed
    return out


def _show(v: Any) -> str:
    text = json.dumps(v) if not (isinstance(v, float) and not math.isfinite(v)) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str):
    raise _NonFinite(name)


def parse_line(text: str, line: int) -> ScoreLine | None:
    """One input line -> ScoreLine, or None for a blank line. Raises LineError."""
    if not text.strip():
        return None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except _NonFinite as exc:
        raise LineError(line, f"{exc} is not a number JSON allows: write a finite number there") from None
    except ValueError as exc:
        raise LineError(line, f"not valid JSON ({exc}); write one JSON object per line, such as "
                              '{"prompt": "Hi", "reply": "Hello!", "signals": {"thumbs": 1}}') from None
    if not isinstance(obj, dict):
        raise LineError(line, f'must be a JSON object with "prompt" and "reply", got {_show(obj)}')
    for key in obj:
        if key not in LINE_KEYS:
            near = difflib.get_close_matches(key, LINE_KEYS, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise LineError(line, f"unknown key {key!r}: {hint}a line has {', '.join(LINE_KEYS)}")
    for key in ("prompt", "reply"):
        if key not in obj:
            raise LineError(line, f'"{key}" is missing: give the {key} text as a string')
        if not isinstance(obj[key], str):
            raise LineError(line, f'"{key}" must be a string, got {_show(obj[key])}')
    finish = obj.get("finish_reason", "stop")
    if finish not in FINISH_REASONS:
        raise LineError(line, f'"finish_reason" must be one of {", ".join(FINISH_REASONS)}; got {_show(finish)}')
    ident = obj.get("id")
    if ident is not None and not isinstance(ident, (str, int, float)):
        raise LineError(line, f'"id" must be a string or a number, got {_show(ident)}')
    return ScoreLine(line, obj["prompt"], obj["reply"], _check_signals(obj.get("signals"), line), finish, ident)


# --------------------------------------------------------------------------- signals -> events
def signal_events(signals: Mapping[str, Any], ended_at: float) -> list[dict]:
    """The events the chat page would have sent for these signals, one second after the reply ended."""
    ts, out, tags = ended_at + 1.0, [], []
    for name, value in signals.items():
        event = {"kind": name, "value": value, "ts": ts, "user_id": "", "extra": {}}
        if name.startswith("tag_") or name == "safety":
            if value:
                tags.append(name[4:] if name != "safety" else feedback_tags.UNSAFE)
            continue
        if value is False and name in ("copy", "regenerate", "abandon", "edited", "continuation"):
            continue            # false: the user did not
        if name == "choose":
            event["extra"] = {"other": "the other candidate"}
        elif name == "sibling":
            event["extra"] = {"other": "its sibling", "how": "chose it"}
        elif name == "continuation":
            event.update(value=None, extra={"gap_s": 0.0 if value is True else value})
        elif name in ("copy", "regenerate", "abandon", "edited"):
            event["value"] = None
        out.append(event)
    if tags:
        out.append({"kind": "reasons", "value": None, "ts": ts, "user_id": "", "extra": {"tags": tags}})
    return out


def reward_of(line: ScoreLine, quality: Mapping | None, cfg: RewardConfig, ended_at: float) -> RewardBreakdown:
    """compute_reward of the line, as the worker computes it from the reply record and its events."""
    facts = ReplyFacts(reply_id=f"line{line.line}", text=line.reply, n_tokens=0, finish_reason=line.finish_reason,
                       ended_at=ended_at, quality=QualityScores.from_mapping(quality))
    return compute_reward(facts, signal_events(line.signals, ended_at), cfg)


def result_row(line: ScoreLine, quality: Mapping | None, reward: RewardBreakdown) -> dict:
    """The --json object of one line: reward, unsafe, relevance, fluency first, then the details."""
    q = dict(quality or {})
    row = {"line": line.line, **({"id": line.id} if line.id is not None else {}),
           "reward": round(reward.total, 4), "unsafe": q.pop("unsafe", None), "relevance": q.pop("relevance", None),
           "fluency": q.pop("fluency", None),
           "components": {k: round(v, 4) for k, v in reward.components.items()}, "raw_sum": round(reward.raw_sum, 4),
           "has_signal": reward.has_signal, "unsafe_level": reward.unsafe, "veto": reward.veto}
    row.update(q)
    if reward.notes:
        row["notes"] = list(reward.notes)
    return row
