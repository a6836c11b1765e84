"""Feedback over the websocket and POST /v1/feedback, with real Redis: each kind stored
with the right fields, exactly once; every bad case refused with nothing stored."""
from __future__ import annotations

import threading

import pytest

from core.keys import Keys
from tests.support.clients import Chat, http
from tests.support.redis_view import events

pytestmark = pytest.mark.integration

EVENT_FIELDS = {"event_id", "kind", "reply_id", "session_id", "user_id", "adapter_version", "server_time"}


@pytest.mark.parametrize("kind, value, stored", [
    ("thumbs", 1, "1"), ("thumbs", -1, "-1"), ("rating", 4, "4"), ("copy", None, None), ("dwell", 1500, "1500"),
])
def test_each_kind_is_stored_with_its_fields(server, rdb, kind, value, stored):
    chat = Chat(server, server.token("fiona"))
    reply_id = chat.ask("hello")["start"]["reply_id"]
    fid = f"fb-{kind}-{value}"
    chat.send({"type": "feedback", "feedback_id": fid, "reply_id": reply_id, "kind": kind, "value": value,
               "client_time": 1700000000000})
    ack = chat.recv_type("ack")
    assert ack == {"type": "ack", "feedback_id": fid, "duplicate": False}
    [ev] = events(server, rdb, feedback_id=fid)
    assert EVENT_FIELDS <= ev.keys()
    assert ev["kind"] == kind and ev.get("value") == stored and ev["reply_id"] == reply_id
    assert ev["user_id"] == "fiona" and ev["session_id"] == chat.session_id and ev["adapter_version"] == "base"
    assert ev["client_time"] == "1700000000000" and float(ev["since_reply_end_ms"]) >= 0


def test_a_retry_with_the_same_id_is_acknowledged_once_and_stored_once(server, rdb):
    chat = Chat(server, server.token("gus"))
    reply_id = chat.ask("hello")["start"]["reply_id"]
    assert chat.feedback(reply_id, "thumbs", 1, "same")["duplicate"] is False
    assert chat.feedback(reply_id, "thumbs", 1, "same")["duplicate"] is True
    assert len(events(server, rdb, feedback_id="same", user_id="gus")) == 1
    # a changed thumb is a new event with a new id
    assert chat.feedback(reply_id, "thumbs", -1, "changed")["duplicate"] is False
    assert [e["value"] for e in events(server, rdb, reply_id=reply_id, kind="thumbs")] == ["1", "-1"]


def test_refusals_store_nothing(server_factory, rdb):
    srv = server_factory(REWARDLOOP_FEEDBACK_RATE=1, REWARDLOOP_FEEDBACK_BURST=6)
    alice, bob = Chat(srv, srv.token("alice")), Chat(srv, srv.token("bob"))
    a_reply = alice.ask("mine")["start"]["reply_id"]
    before = rdb.xlen(Keys(srv.prefix).events)
    cases = [
        (bob.feedback(a_reply, "thumbs", 1), "forbidden"),
        (alice.feedback("rep_nope", "thumbs", 1), "unknown_reply"),
        (alice.feedback(a_reply, "rating", 9), "bad_value"),
        (alice.feedback(a_reply, "dwell", -5), "bad_value"),
        (alice.feedback(a_reply, "dwell", 3_600_000), "bad_value"),   # longer than the reply has existed
        (alice.feedback(a_reply, "choose", "rep_other"), "bad_value"),  # not candidates of one turn
    ]
    for frame, code in cases:
        assert frame["type"] == "error" and frame["code"] == code, frame
        assert frame["ref"] and frame["message"]
    assert "another user" in cases[0][0]["message"]
    assert rdb.xlen(Keys(srv.prefix).events) == before
    # rate limit: the burst is spent; the error says when to retry
    limited = [alice.feedback(a_reply, "copy") for _ in range(8)]
    refused = [f for f in limited if f["type"] == "error"]
    assert refused and all(f["code"] == "rate_limited" and "retry in" in f["message"] for f in refused)
    stored = len([f for f in limited if f["type"] == "ack"])
    assert rdb.xlen(Keys(srv.prefix).events) == before + stored


def test_continuation_is_derived_once_across_connections_and_servers(server_factory, rdb):
    prefix = "cont:"
    a = server_factory(prefix)
    b = server_factory(prefix)
    first = Chat(a, a.token("jo"))
    reply_id = first.ask("hello")["start"]["reply_id"]
    # two connections to two server processes write again in the same session at once
    chats = [Chat(a, a.token("jo"), first.session_id), Chat(b, b.token("jo"), first.session_id)]
    threads = [threading.Thread(target=c.ask, args=("again",)) for c in chats]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    conts = [e for e in events(a, rdb, kind="continuation") if e["reply_id"] == reply_id]
    assert len(conts) == 1 and float(conts[0]["value"]) >= 0 and conts[0]["derived"] == "1"


def test_post_feedback_over_http(server):
    chat = Chat(server, server.token("kim"))
    reply_id = chat.ask("hello")["start"]["reply_id"]
    url = server.url + "/v1/feedback"
    body = {"feedback_id": "h1", "reply_id": reply_id, "kind": "rating", "value": 5}
    assert http("POST", url, body, token=server.token("kim")) == (
        200, {"feedback_id": "h1", "duplicate": False, "status": "stored"})
    assert http("POST", url, body, token=server.token("kim"))[1]["duplicate"] is True
    status, err = http("POST", url, {**body, "feedback_id": "h2"}, token=server.token("lee"))
    assert status == 403 and err["error"]["code"] == "forbidden"
    status, err = http("POST", url, {**body, "feedback_id": "h3", "reply_id": "rep_x"}, token=server.token("kim"))
    assert status == 404
    status, err = http("POST", url, {**body, "feedback_id": "h4", "value": 0}, token=server.token("kim"))
    assert status == 400 and "1..5" in err["error"]["message"]
    assert http("POST", url, body)[0] == 401
