"""The `/ws/chat` protocol: frame parsing and validation. Pure: no I/O.

Client -> server frames (JSON text):
  hello        {token, session_id?}
  user_message {text, client_msg_id, session_id?, candidates? (1|2), parent_id?, edit_of?}
               parent_id: the reply this message follows ("" = the first turn): the history sent
               to the model is the branch that ends there. Absent: after the session's current
               branch. edit_of: the reply to the earlier wording this message replaces (an edit).
  feedback     {feedback_id, reply_id, kind, value?, client_time?, tags?, comment?}
               tags/comment (core/feedback_tags.py) on thumbs, rating and `reasons` feedback
  select       {reply_id}   the branch ending at reply_id is the conversation now (sibling arrows)
  stop         {reply_id}
Server -> client: ready, reply_start, token, reply_end, ack, error (see server_* helpers).

Every problem is a `ProtocolError(code, message)`: the message says what to do.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from core.feedback_tags import TagError, check_tags

# Named close codes (4000-4999 are the application's own range).
CLOSE_AUTH_FAILED = 4401      # bad, forged or expired token: get a new one
CLOSE_HELLO_TIMEOUT = 4408    # no hello within the allowed time

FEEDBACK_KINDS = ("thumbs", "rating", "choose", "copy", "regenerate", "dwell", "reasons")
TAGGED_KINDS = ("thumbs", "rating", "reasons")  # feedback that may carry reason tags and a comment
MAX_ID_LEN = 128
MAX_DWELL_MS = 24 * 3600 * 1000


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str, ref: str | None = None):
        super().__init__(message)
        self.code, self.message, self.ref = code, message, ref

    def frame(self) -> dict:
        return server_error(self.code, self.message, self.ref)


@dataclass(frozen=True)
class Hello:
    token: str
    session_id: str | None = None


@dataclass(frozen=True)
class UserMessage:
    text: str
    client_msg_id: str
    session_id: str | None = None
    candidates: int = 1
    adapter_version: str | None = None   # pin a version (debugging, replay)
    parent_id: str | None = None         # None: after the current branch; "": the first turn
    edit_of: str | None = None           # the reply to the earlier wording of an edited message


@dataclass(frozen=True)
class Feedback:
    feedback_id: str
    reply_id: str
    kind: str
    value: float | str | None = None
    client_time: float | None = None
    tags: tuple[str, ...] = ()
    comment: str = ""


@dataclass(frozen=True)
class Stop:
    reply_id: str


@dataclass(frozen=True)
class Select:
    reply_id: str


def _str(frame: dict, name: str, required: bool = True, max_len: int = MAX_ID_LEN) -> str | None:
    v = frame.get(name)
    if v is None:
        if required:
            raise ProtocolError("missing_field", f"field {name!r} is required for a {frame.get('type', 'feedback')} frame")
        return None
    if not isinstance(v, str) or not v or len(v) > max_len:
        raise ProtocolError("bad_value", f"field {name!r} must be a non-empty string of at most {max_len} characters")
    return v


def parse_client_frame(raw: str | bytes, max_bytes: int):
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise ProtocolError("too_large", f"frame is {size} bytes; the limit is {max_bytes}: send a shorter message")
    try:
        frame = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("bad_json", "frame is not valid JSON: send one JSON object per text frame") from None
    except RecursionError:   # '[[[[...' a few thousand deep, well under the size limit
        raise ProtocolError("bad_json", "frame nests too deeply: send a flat JSON object") from None
    if not isinstance(frame, dict):
        raise ProtocolError("bad_json", "frame must be a JSON object with a 'type' field")
    kind = frame.get("type")
    if kind == "hello":
        return Hello(token=_str(frame, "token", max_len=4096), session_id=_str(frame, "session_id", required=False))
    if kind == "user_message":
        text = frame.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ProtocolError("missing_field", "user_message needs a non-empty 'text'")
        cands = frame.get("candidates", 1)
        if type(cands) is not int or cands not in (1, 2):
            raise ProtocolError("bad_value", f"'candidates' must be 1 or 2, got {cands!r}")
        parent = frame.get("parent_id")
        if parent is not None and parent != "":
            parent = _str(frame, "parent_id")
        edit_of = _str(frame, "edit_of", required=False)
        if edit_of is not None and parent is None:
            raise ProtocolError("missing_field", "an edit ('edit_of') needs 'parent_id': the reply the edited "
                                "message follows (\"\" for the first turn)")
        return UserMessage(text=text, client_msg_id=_str(frame, "client_msg_id"),
                           session_id=_str(frame, "session_id", required=False), candidates=cands,
                           adapter_version=_str(frame, "adapter_version", required=False),
                           parent_id=parent, edit_of=edit_of)
    if kind == "feedback":
        return parse_feedback(frame)
    if kind == "stop":
        return Stop(reply_id=_str(frame, "reply_id"))
    if kind == "select":
        return Select(reply_id=_str(frame, "reply_id"))
    raise ProtocolError("unknown_type", f"unknown frame type {kind!r}; expected one of hello, user_message, "
                        "feedback, select, stop")


def parse_feedback(frame: dict) -> Feedback:
    """Shared by the websocket and POST /v1/feedback: schema and value ranges."""
    fid = _str(frame, "feedback_id")
    try:
        reply_id = _str(frame, "reply_id")
        kind = frame.get("kind")
        if kind not in FEEDBACK_KINDS:
            raise ProtocolError("bad_value", f"feedback kind {kind!r} is unknown; use one of {', '.join(FEEDBACK_KINDS)}")
        value = _feedback_value(kind, frame.get("value"))
        ct = frame.get("client_time")
        if ct is not None and (not isinstance(ct, (int, float)) or isinstance(ct, bool) or not math.isfinite(ct)):
            raise ProtocolError("bad_value", "'client_time' must be a number (milliseconds since the epoch)")
        tags, comment = _reasons(kind, value, frame)
    except ProtocolError as err:
        err.ref = fid
        raise
    return Feedback(fid, reply_id, kind, value, ct, tags, comment)


def _reasons(kind: str, value, frame: dict) -> tuple[tuple[str, ...], str]:
    """Reason tags and comment: known tags of one polarity (that of a thumbs they ride on), a
    bounded comment; a `reasons` feedback needs at least one of them."""
    if kind not in TAGGED_KINDS:
        if frame.get("tags") or frame.get("comment"):
            raise ProtocolError("bad_value", f"{kind} feedback carries no tags or comment: send them with "
                                f"{', '.join(TAGGED_KINDS)} feedback")
        return (), ""
    try:
        tags, comment = check_tags(frame.get("tags"), frame.get("comment"), value if kind == "thumbs" else None)
    except TagError as err:
        raise ProtocolError("bad_value", str(err)) from None
    if kind == "reasons" and not tags and not comment:
        raise ProtocolError("missing_field", "reasons feedback needs 'tags' (a list of tag names) or a 'comment'")
    return tags, comment


def _number(value, kind: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ProtocolError("bad_value", f"{kind} feedback needs a numeric 'value', got {value!r}")
    return value


def _feedback_value(kind: str, value):
    if kind == "thumbs":
        if _number(value, kind) not in (1, -1):
            raise ProtocolError("bad_value", f"thumbs value must be +1 or -1, got {value!r}")
        return int(value)
    if kind == "rating":
        if _number(value, kind) not in (1, 2, 3, 4, 5):
            raise ProtocolError("bad_value", f"rating value must be an integer 1..5, got {value!r}")
        return int(value)
    if kind == "choose":
        if not isinstance(value, str) or not value or len(value) > MAX_ID_LEN:
            raise ProtocolError("bad_value", "choose needs 'reply_id' = the chosen candidate and 'value' = the "
                                "other candidate's reply id")
        return value
    if kind == "dwell":
        v = _number(value, kind)
        if v < 0 or v > MAX_DWELL_MS:
            raise ProtocolError("bad_value", f"dwell value is visible milliseconds and must be in 0..{MAX_DWELL_MS}, "
                                f"got {value!r}")
        return int(v)
    return None  # copy, regenerate, reasons carry no value


# --- server frames ------------------------------------------------------------------
def server_error(code: str, message: str, ref: str | None = None) -> dict:
    frame = {"type": "error", "code": code, "message": message}
    if ref is not None:
        frame["ref"] = ref
    return frame
