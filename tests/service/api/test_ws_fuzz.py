"""Hypothesis-generated values for every field of `user_message` and `feedback` frames, over a
real websocket to a real server: every frame gets an answer (an error frame, an ack, or a
reply that ends), the connection stays usable, and a normal chat succeeds after all of them."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.clients import Chat

pytestmark = pytest.mark.integration

MISSING = object()
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30), st.sampled_from([0, 1, 2, -1, 5, 10 ** 400, 2 ** 63]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1.5]),
    st.text(max_size=40), st.sampled_from(["", " ", "\x00", "x" * 200, "é" * 5000, "base", "v1", "thumbs"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=5), inner, max_size=3), max_leaves=8)
FUZZ = settings(max_examples=80, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _fields(data, valid: dict) -> dict:
    """Each field valid, except one or two (or none) that get any JSON value or are left out:
    every field is fuzzed on its own, with the rest of the frame fine."""
    fuzzed = data.draw(st.sets(st.sampled_from(sorted(valid)), max_size=2), "fuzzed")
    return {name: data.draw(st.one_of(VALUES, st.just(MISSING)) if name in fuzzed else strategy, name)
            for name, strategy in valid.items()}


def _frame(kind: str, fields: dict) -> str:
    frame = {"type": kind, **{k: v for k, v in fields.items() if v is not MISSING}}
    return json.dumps(frame)   # NaN/Infinity included as Python's json writes them: the server must cope


def _answer(chat: Chat, timeout: float = 60) -> list[dict]:
    """Frames up to the end of this frame's answer: an error or ack, and any reply it started
    (regenerate acks first; one reply_end per candidate)."""
    got, replies, ended = [], 0, 0
    while True:
        f = chat.recv(timeout)
        got.append(f)
        if f["type"] == "reply_start":
            replies = max(replies, len(f.get("candidates") or [None]))
        elif f["type"] == "reply_end":
            ended += 1
            if ended >= replies:
                return got
        elif f["type"] == "error" and f.get("code") == "generation_failed":
            continue                                   # its reply_end follows
        elif f["type"] in ("error", "ack") and not replies:
            if f["type"] == "ack" and got[0:1] and f.get("duplicate") is False and _regenerating(chat):
                replies = 1                            # a regenerate ack: its new reply follows
                continue
            return got


def _regenerating(chat: Chat) -> bool:
    return getattr(chat, "_last_kind", None) == "regenerate"


@pytest.fixture(scope="module")
def fuzz_chat(server):
    chat = Chat(server, server.token("fuzzer"))
    first = chat.ask("hello")
    chat.reply_id = first["start"]["reply_id"]
    yield chat
    chat.close()


@FUZZ
@given(data=st.data())
def test_every_user_message_field_fuzzed_gets_an_answer(fuzz_chat, data):
    chat = fuzz_chat
    fields = _fields(data, {
        "text": st.text(min_size=1, max_size=30).filter(str.strip),
        "client_msg_id": st.text(min_size=1, max_size=20),
        "session_id": st.sampled_from([chat.session_id, MISSING]),
        "candidates": st.sampled_from([1, 2, MISSING]),
        "adapter_version": st.sampled_from(["base", MISSING]),
    })
    chat._last_kind = None
    chat.send(_frame("user_message", fields))
    frames = _answer(chat)
    event(f"answer: {frames[-1].get('code') or frames[-1]['type']}")
    assert frames[-1]["type"] in ("error", "reply_end")
    if frames[-1]["type"] == "error":
        assert frames[-1]["code"] != "internal" and len(frames[-1]["message"]) > 10


@FUZZ
@given(data=st.data())
def test_every_feedback_field_fuzzed_gets_an_answer(fuzz_chat, data):
    chat = fuzz_chat
    fields = _fields(data, {
        "feedback_id": st.text(min_size=1, max_size=20),
        "reply_id": st.just(chat.reply_id),
        "kind": st.sampled_from(["thumbs", "rating", "choose", "copy", "regenerate", "dwell"]),
        "value": st.sampled_from([1, -1, 3, 5, 1200, chat.reply_id, MISSING]),
        "client_time": st.one_of(st.floats(0, 2e12), st.just(MISSING)),
    })
    kind = fields["kind"]
    chat._last_kind = kind
    chat.send(_frame("feedback", fields))
    frames = _answer(chat)
    event(f"answer: {frames[-1].get('code') or frames[-1]['type']}")
    assert frames[-1]["type"] in ("error", "ack", "reply_end")
    if frames[-1]["type"] == "error":
        assert frames[-1]["code"] != "internal" and len(frames[-1]["message"]) > 10


def test_a_normal_chat_succeeds_after_the_fuzzing(server, fuzz_chat):
    assert fuzz_chat.ask("still there?")["end"]["finish_reason"] in ("stop", "length")
    fresh = Chat(server, server.token("after-fuzz"))
    assert fresh.ask("and a new one?")["end"]["n_tokens"] > 0
    fresh.close()
