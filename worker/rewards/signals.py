"""From a raw `events` stream entry to reward signals: parsing, validation, and what each
event means for which reply. Pure: no Redis, no Celery (the ledger does the I/O)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from worker.rewards.quality import QualityScores
from worker.rewards.user_signals import ReplyFacts

FEEDBACK_KINDS = ("thumbs", "rating", "choose", "copy", "regenerate", "dwell", "continuation", "abandon",
                  "reasons", "sibling", "edited")
PAIR_KINDS = {"choose": "choose", "sibling": "sibling"}  # kind -> preference pair source
NO_OP_KINDS = ("user_message",)  # recorded for replay; carries no signal about a reply
VOTE_KINDS = ("thumbs", "rating")  # what the anomaly check looks at


class PoisonEvent(ValueError):
    """An event that can never be processed (retrying will not help)."""


@dataclass(frozen=True)
class Event:
    stream_id: str
    kind: str
    reply_id: str
    session_id: str
    user_id: str
    event_id: str
    value: object
    server_time: float
    since_reply_end_s: float | None
    raw: dict = field(default_factory=dict, repr=False)


def _value(raw: str | None):
    """The server JSON-encodes non-string values (numbers) and stores strings (candidate ids) as is."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _float(raw: str | None, name: str, stream_id: str) -> float | None:
    if raw in (None, "", "null"):
        return None
    try:
        return float(raw)
    except ValueError:
        raise PoisonEvent(f"event {stream_id}: field {name!r} is not a number: {raw!r}") from None


def parse_event(stream_id: str, fields: dict[str, str]) -> Event:
    kind = fields.get("kind", "")
    if kind not in FEEDBACK_KINDS + NO_OP_KINDS + ("reply",):
        raise PoisonEvent(f"event {stream_id}: unknown kind {kind!r}")
    reply_id = fields.get("reply_id", "")
    if kind != "user_message" and not reply_id:
        raise PoisonEvent(f"event {stream_id}: {kind} event without reply_id")
    event_id = fields.get("event_id", "")
    if kind in FEEDBACK_KINDS and not event_id:
        raise PoisonEvent(f"event {stream_id}: {kind} event without event_id (needed to count it once)")
    since_ms = _float(fields.get("since_reply_end_ms"), "since_reply_end_ms", stream_id)
    return Event(stream_id, kind, reply_id, fields.get("session_id", ""), fields.get("user_id", ""), event_id,
                 _value(fields.get("value")), _float(fields.get("server_time"), "server_time", stream_id) or 0.0,
                 None if since_ms is None else since_ms / 1000.0, fields)


def _reasons(ev: Event) -> dict:
    """{tags, comment} an event carries (the server validated them; stored as JSON / text)."""
    out = {}
    tags = _value(ev.raw.get("tags"))
    if isinstance(tags, list) and tags:
        out["tags"] = [str(t) for t in tags]
    if ev.raw.get("comment"):
        out["comment"] = ev.raw["comment"]
    return out


def signals_of(ev: Event) -> list[tuple[str, dict]]:
    """[(reply_id, signal dict)] that one feedback event gives. A choose names the chosen reply
    and, as its value, the other candidate: chosen +, the other -; a sibling event likewise
    (preferred +, the other -). Reason tags and a comment ride in the signal's extra."""
    base = {"kind": ev.kind, "ts": ev.server_time, "user_id": ev.user_id, "event_id": ev.event_id}
    if ev.kind == "sibling":
        if not isinstance(ev.value, str) or not ev.value or ev.value == ev.reply_id:
            raise PoisonEvent(f"event {ev.stream_id}: sibling needs the other answer's id as value, got {ev.value!r}")
        how = ev.raw.get("how", "")
        return [(ev.reply_id, {**base, "value": "preferred", "extra": {"other": ev.value, "how": how}}),
                (ev.value, {**base, "value": "other", "extra": {"other": ev.reply_id, "how": how}})]
    reasons = _reasons(ev)
    if reasons:
        return [(ev.reply_id, {**base, "value": ev.value, "extra": reasons})]
    if ev.kind == "choose":
        if not isinstance(ev.value, str) or not ev.value or ev.value == ev.reply_id:
            raise PoisonEvent(f"event {ev.stream_id}: choose needs the other candidate's id as value, got {ev.value!r}")
        return [(ev.reply_id, {**base, "value": "chosen", "extra": {"other": ev.value}}),
                (ev.value, {**base, "value": "rejected", "extra": {"other": ev.reply_id}})]
    if ev.kind == "continuation":
        return [(ev.reply_id, {**base, "value": None, "extra": {"gap_s": ev.value}})]
    return [(ev.reply_id, {**base, "value": ev.value})]


def vote_of(ev: Event) -> list | None:
    """[kind, value, seconds after the reply ended] for the anomaly check, or None."""
    if ev.kind in VOTE_KINDS:
        return [ev.kind, ev.value, ev.since_reply_end_s]
    return None


def choose_pair(ev: Event) -> dict | None:
    """The preference pair a choose (or sibling) event yields (written once, with its signal)."""
    if ev.kind not in PAIR_KINDS:
        return None
    return {"chosen_id": ev.reply_id, "rejected_id": str(ev.value), "source": PAIR_KINDS[ev.kind],
            "user_id": ev.user_id, "session_id": ev.session_id}


def reply_facts(reply: dict[str, str]) -> ReplyFacts:
    """ReplyFacts from a `reply:{id}` hash (decoded strings; a `quality` field that does not
    decode counts as not scored)."""
    return ReplyFacts(reply_id=reply.get("reply_id", ""), text=reply.get("text", ""),
                      n_tokens=int(reply.get("n_tokens") or 0), finish_reason=reply.get("finish_reason") or "stop",
                      ended_at=float(reply.get("ended_at") or 0.0), user_id=reply.get("user_id", ""),
                      adapter_version=reply.get("adapter_version", ""), quality=QualityScores.from_mapping(
                          _value(reply.get("quality")) if reply.get("quality") else None))
