"""The /ws/chat frame parser: every frame type, every error code, feedback value ranges."""

import json

import pytest

from service.serving.protocol import (
    MAX_DWELL_MS,
    MAX_ID_LEN,
    Feedback,
    Hello,
    ProtocolError,
    Stop,
    UserMessage,
    parse_client_frame,
    parse_feedback,
    server_error,
)

LIMIT = 8192


def parse(frame, max_bytes=LIMIT):
    return parse_client_frame(json.dumps(frame), max_bytes)


def error_of(frame, max_bytes=LIMIT) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(frame, max_bytes) if not isinstance(frame, (str, bytes)) else parse_client_frame(frame, max_bytes)
    return info.value


def fb(kind, value=None, **extra):
    frame = {"type": "feedback", "feedback_id": "f1", "reply_id": "r1", "kind": kind, **extra}
    if value is not None:
        frame["value"] = value
    return frame


# --- each frame type --------------------------------------------------------------
def test_hello_with_and_without_session():
    assert parse({"type": "hello", "token": "v1.a.b"}) == Hello(token="v1.a.b", session_id=None)
    assert parse({"type": "hello", "token": "t", "session_id": "s9"}) == Hello("t", "s9")


def test_user_message_defaults_and_fields():
    msg = parse({"type": "user_message", "text": "hi there", "client_msg_id": "c1"})
    assert msg == UserMessage(text="hi there", client_msg_id="c1", session_id=None, candidates=1)
    msg = parse({"type": "user_message", "text": "x", "client_msg_id": "c2", "session_id": "s1", "candidates": 2})
    assert (msg.session_id, msg.candidates) == ("s1", 2)


def test_feedback_and_stop_frames():
    got = parse(fb("thumbs", 1, client_time=1_700_000_000_000))
    assert got == Feedback("f1", "r1", "thumbs", 1, 1_700_000_000_000)
    assert parse({"type": "stop", "reply_id": "r7"}) == Stop("r7")


def test_bytes_frame_is_accepted():
    raw = json.dumps({"type": "stop", "reply_id": "r1"}).encode()
    assert parse_client_frame(raw, LIMIT) == Stop("r1")


# --- error codes --------------------------------------------------------------------
def test_too_large_names_the_size_and_limit():
    raw = json.dumps({"type": "user_message", "text": "é" * 100, "client_msg_id": "c"}, ensure_ascii=False)
    size = len(raw.encode())  # bytes, not characters: é is 2 bytes
    assert size > len(raw)
    err = error_of(raw, max_bytes=size - 1)
    assert err.code == "too_large"
    assert f"{size} bytes" in err.message and str(size - 1) in err.message
    # exactly at the limit is fine
    assert isinstance(parse_client_frame(raw, size), UserMessage)


def test_bad_json_for_non_json_and_for_non_objects():
    assert error_of("{not json").code == "bad_json"
    assert error_of(b"\xff\xfe\x00garbage").code == "bad_json"
    err = error_of('[{"type": "stop", "reply_id": "r1"}]')
    assert err.code == "bad_json" and "object" in err.message
    assert error_of('"hello"').code == "bad_json"


def test_unknown_type_lists_the_known_ones():
    err = error_of({"type": "shout", "text": "hi"})
    assert err.code == "unknown_type"
    assert "'shout'" in err.message
    for name in ("hello", "user_message", "feedback", "stop"):
        assert name in err.message
    assert error_of({"text": "no type"}).code == "unknown_type"


@pytest.mark.parametrize("frame, field", [
    ({"type": "hello"}, "token"),
    ({"type": "stop"}, "reply_id"),
    ({"type": "user_message", "text": "hi"}, "client_msg_id"),
    ({"type": "user_message", "client_msg_id": "c"}, "text"),
    ({"type": "feedback", "reply_id": "r", "kind": "copy"}, "feedback_id"),
    ({"type": "feedback", "feedback_id": "f", "kind": "copy"}, "reply_id"),
])
def test_missing_field_names_the_field(frame, field):
    err = error_of(frame)
    assert err.code == "missing_field"
    assert field in err.message


def test_blank_text_is_missing():
    assert error_of({"type": "user_message", "text": "   ", "client_msg_id": "c"}).code == "missing_field"


@pytest.mark.parametrize("frame", [
    {"type": "stop", "reply_id": ""},
    {"type": "stop", "reply_id": 12},
    {"type": "stop", "reply_id": "r" * (MAX_ID_LEN + 1)},
    {"type": "hello", "token": ["t"]},
    {"type": "hello", "token": "t" * 4097},
    {"type": "user_message", "text": "x", "client_msg_id": "c", "session_id": 5},
])
def test_bad_value_for_wrong_strings(frame):
    err = error_of(frame)
    assert err.code == "bad_value"
    assert "string" in err.message


def test_id_at_max_length_is_accepted():
    assert parse({"type": "stop", "reply_id": "r" * MAX_ID_LEN}).reply_id == "r" * MAX_ID_LEN


@pytest.mark.parametrize("cands", [0, 3, -1, True, False, "2", None, [2]])
def test_candidates_only_1_or_2(cands):
    err = error_of({"type": "user_message", "text": "x", "client_msg_id": "c", "candidates": cands})
    assert err.code == "bad_value"
    assert "candidates" in err.message


# --- feedback values per kind ----------------------------------------------------------
@pytest.mark.parametrize("value", [1, -1])
def test_thumbs_accepts_plus_minus_one(value):
    assert parse(fb("thumbs", value)).value == value


@pytest.mark.parametrize("value", [0, 2, -2, 0.5, True, False, "1", None, float("nan")])
def test_thumbs_rejects_everything_else(value):
    frame = fb("thumbs")
    frame["value"] = value
    assert error_of(frame).code == "bad_value"


@pytest.mark.parametrize("value", [1, 2, 3, 4, 5])
def test_rating_accepts_1_to_5(value):
    got = parse(fb("rating", value)).value
    assert got == value and isinstance(got, int)


@pytest.mark.parametrize("value", [0, 6, 2.5, -1, True, "3", None])
def test_rating_rejects_out_of_range_non_int_and_bool(value):
    frame = fb("rating")
    frame["value"] = value
    err = error_of(frame)
    assert err.code == "bad_value"
    assert "rating" in err.message


def test_choose_needs_the_other_reply_id():
    assert parse(fb("choose", "r2")).value == "r2"
    for value in (None, "", 2, ["r2"]):
        frame = fb("choose")
        frame["value"] = value
        err = error_of(frame)
        assert err.code == "bad_value"
        assert "other candidate" in err.message


@pytest.mark.parametrize("value", [0, 1500, MAX_DWELL_MS])
def test_dwell_in_range(value):
    got = parse(fb("dwell", value)).value
    assert got == value and isinstance(got, int)


@pytest.mark.parametrize("value", [-1, MAX_DWELL_MS + 1, True, "100", None, float("inf")])
def test_dwell_out_of_range(value):
    frame = fb("dwell")
    frame["value"] = value
    assert error_of(frame).code == "bad_value"


def test_nan_and_infinity_json_literals_are_rejected():
    raw = '{"type":"feedback","feedback_id":"f","reply_id":"r","kind":"dwell","value":NaN}'
    assert error_of(raw).code == "bad_value"
    raw = '{"type":"feedback","feedback_id":"f","reply_id":"r","kind":"thumbs","value":Infinity}'
    assert error_of(raw).code == "bad_value"


@pytest.mark.parametrize("kind", ["copy", "regenerate"])
def test_copy_and_regenerate_carry_no_value(kind):
    assert parse(fb(kind)).value is None
    assert parse(fb(kind, 1)).value is None  # a stray value is dropped, not stored


def test_unknown_feedback_kind_lists_the_kinds():
    err = error_of(fb("love"))
    assert err.code == "bad_value"
    assert "'love'" in err.message and "thumbs" in err.message and "dwell" in err.message


def test_client_time_must_be_a_finite_number():
    for ct in ("yesterday", True, float("inf")):
        err = error_of(fb("copy", client_time=ct))
        assert err.code == "bad_value" and "client_time" in err.message


# --- errors carry the feedback id ------------------------------------------------------
@pytest.mark.parametrize("frame", [
    fb("thumbs", 3),
    fb("nope"),
    {"type": "feedback", "feedback_id": "f1", "kind": "copy"},
    fb("copy", client_time="x"),
])
def test_feedback_errors_carry_ref(frame):
    err = error_of(frame)
    assert err.ref == "f1"
    assert err.frame() == {"type": "error", "code": err.code, "message": err.message, "ref": "f1"}


def test_parse_feedback_directly_for_http():
    err = pytest.raises(ProtocolError, parse_feedback, {"feedback_id": "f9", "reply_id": "r", "kind": "rating",
                                                        "value": 9}).value
    assert (err.code, err.ref) == ("bad_value", "f9")
    # without a usable feedback id there is nothing to refer to
    err = pytest.raises(ProtocolError, parse_feedback, {"reply_id": "r", "kind": "copy"}).value
    assert err.code == "missing_field" and err.ref is None


def test_error_frames_without_ref():
    assert server_error("bad_json", "m") == {"type": "error", "code": "bad_json", "message": "m"}
    assert "ref" not in error_of("nope").frame()
