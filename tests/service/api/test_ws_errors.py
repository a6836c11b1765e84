"""Bad input on the websocket: a clear error frame, and the connection stays usable
(closed with a named code only for auth failures)."""
from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from service.serving.auth import create_token
from service.serving.protocol import CLOSE_AUTH_FAILED
from tests.support.clients import Chat
from tests.support.processes import SECRET

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("frame, code", [
    ("this is not json", "bad_json"),
    ("[1, 2]", "bad_json"),
    (json.dumps({"type": "dance"}), "unknown_type"),
    (json.dumps({"type": "user_message", "client_msg_id": "x"}), "missing_field"),
    (json.dumps({"type": "user_message", "text": "hi"}), "missing_field"),
    (json.dumps({"type": "user_message", "text": "x" * 9000, "client_msg_id": "x"}), "too_large"),
    (json.dumps({"type": "feedback", "feedback_id": "f", "reply_id": "r", "kind": "hug"}), "bad_value"),
    (json.dumps({"type": "hello", "token": "again"}), "already_ready"),
])
def test_bad_frames_get_an_error_and_the_connection_stays_usable(server, frame, code):
    chat = Chat(server, server.token("gina"))
    chat.send(frame)
    err = chat.recv_type("error")
    assert err["code"] == code and len(err["message"]) > 10
    assert chat.ask("still there?")["end"]["n_tokens"] > 0
    chat.close()


def test_message_before_hello_is_refused(server):
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "user_message", "text": "hi", "client_msg_id": "m"}))
        err = json.loads(ws.recv(timeout=10))
        assert err["code"] == "not_ready" and "hello" in err["message"]


@pytest.mark.parametrize("token", [
    "garbage",
    create_token("another-secret", "alice", 3600),                 # forged
    create_token(SECRET, "alice", 3600, now=0),                    # expired long ago
])
def test_bad_tokens_close_the_connection_with_the_auth_code(server, token):
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "hello", "token": token}))
        err = json.loads(ws.recv(timeout=10))
        assert err["type"] == "error" and err["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd.code == CLOSE_AUTH_FAILED
