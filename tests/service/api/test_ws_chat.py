"""Websocket chat end to end: real uvicorn, real Redis, tiny model."""
from __future__ import annotations

import json

import pytest

from core.keys import Keys
from tests.support.clients import Chat

pytestmark = pytest.mark.integration


def test_session_resumes_after_reconnect(server):
    chat = Chat(server, server.token("carol"))
    chat.ask("hello")
    chat.close()
    again = Chat(server, server.token("carol"), session_id=chat.session_id)
    assert again.session_id == chat.session_id
    assert again.ask("again")["start"]["turn"] == 1
    # someone else's session id is not resumed
    other = Chat(server, server.token("mallory"), session_id=chat.session_id)
    assert other.session_id != chat.session_id


def test_old_turns_are_dropped_to_fit_the_context_budget(server_factory, rdb):
    srv = server_factory(REWARDLOOP_CONTEXT_BUDGET=140, REWARDLOOP_MAX_NEW_TOKENS=12)
    chat = Chat(srv, srv.token("dora"))
    starts = [chat.ask("tell me something about the number %d please, in detail" % i)["start"] for i in range(6)]
    assert starts[0]["history_truncated"] is False
    assert starts[-1]["history_truncated"] is True and starts[-1]["dropped_turns"] >= 1
    msgs = json.loads(rdb.hget(Keys(srv.prefix).reply(starts[-1]['reply_id']), "prompt_messages"))
    assert msgs[0]["role"] == "system"          # the system prompt is kept
    assert "number 0 " not in json.dumps(msgs)  # the oldest turn is gone
    assert "number 5" in msgs[-1]["content"]


def test_stop_cancels_and_the_engine_serves_the_next_request(server_factory, rdb):
    srv = server_factory(REWARDLOOP_MAX_NEW_TOKENS=2000, REWARDLOOP_CONTEXT_BUDGET=4096)
    chat = Chat(srv, srv.token("erin"))
    chat.send({"type": "user_message", "text": "write a long story", "client_msg_id": "m1"})
    start = chat.recv_type("reply_start")
    chat.recv_type("token")
    chat.send({"type": "stop", "reply_id": start["reply_id"]})
    end = chat.recv_type("reply_end")
    assert end["finish_reason"] == "cancelled" and end["n_tokens"] < 2000
    stored = rdb.hgetall(Keys(srv.prefix).reply(start['reply_id']))
    assert stored["finish_reason"] == "cancelled"
    # stopping something that is not streaming says so
    chat.send({"type": "stop", "reply_id": start["reply_id"]})
    assert chat.recv_type("error")["code"] == "unknown_reply"
    # disconnect mid-reply: the engine drops that stream at its next step
    chat.send({"type": "user_message", "text": "another long story", "client_msg_id": "m2"})
    second = chat.recv_type("reply_start")
    chat.recv_type("token")
    chat.close()
    nxt = Chat(srv, srv.token("erin"))
    nxt.send({"type": "user_message", "text": "hi", "client_msg_id": "m3"})
    nxt.recv_type("reply_start")
    nxt.recv_type("token")
    nxt.send({"type": "stop", "reply_id": nxt.frames[-2]["reply_id"]})
    nxt.recv_type("reply_end")
    dropped = rdb.hgetall(Keys(srv.prefix).reply(second['reply_id']))
    assert dropped["finish_reason"] == "cancelled" and int(dropped["n_tokens"]) < 2000


def test_second_message_while_streaming_is_refused_with_busy(server_factory):
    srv = server_factory(REWARDLOOP_MAX_NEW_TOKENS=400, REWARDLOOP_CONTEXT_BUDGET=2048)
    chat = Chat(srv, srv.token("fred"))
    chat.send({"type": "user_message", "text": "one", "client_msg_id": "m1"})
    start = chat.recv_type("reply_start")
    chat.send({"type": "user_message", "text": "two", "client_msg_id": "m2"})
    err = chat.recv_type("error")
    assert err["code"] == "busy" and "stop" in err["message"]
    chat.send({"type": "stop", "reply_id": start["reply_id"]})
    chat.recv_type("reply_end")
    assert chat.ask("three")["end"]["finish_reason"] in ("stop", "length")  # still usable
