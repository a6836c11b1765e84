"""Abuse and access over a real server: forged and expired tokens, one user reaching for
another's replies and sessions, operator endpoints without the operator token, anonymous
tokens rate-limited per client address (and switched off), one per-user feedback limit over
the websocket and HTTP together, and oversized frames."""
from __future__ import annotations

import http.client as httpclient
import json

import pytest
from starlette.requests import Request
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from core.keys import Keys
from service.serving.auth import create_token
from service.serving.protocol import CLOSE_AUTH_FAILED
from tests.support.clients import Chat, http
from tests.support.processes import ADMIN, SECRET, server_starter

pytestmark = pytest.mark.integration
BURST = 5


@pytest.fixture(scope="module")
def srv(models_dir, redis_url, tmp_path_factory):
    start, started = server_starter(redis_url, tmp_path_factory.mktemp("access"))
    # one feedback per 100 s after the burst: the limit cannot refill during the test
    yield start(REWARDLOOP_FEEDBACK_BURST=BURST, REWARDLOOP_FEEDBACK_RATE=0.01, REWARDLOOP_ANONYMOUS_PER_MINUTE=3)
    for proc in started:
        proc.stop()


def _from(srv, source: str, method: str, path: str, token: str | None = None) -> tuple[int, dict, dict]:
    """An HTTP request from a given loopback source address (127.0.0.0/8 is all local)."""
    conn = httpclient.HTTPConnection("127.0.0.1", srv.port, timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read() or b"{}")
    finally:
        conn.close()


BAD_TOKENS = {
    "forged signature": create_token("another-secret", "alice", 3600),
    "expired": create_token(SECRET, "alice", 3600, now=0),
    "payload swapped": (lambda a, b: f"{b.split('.')[0]}.{b.split('.')[1]}.{a.split('.')[2]}")(
        create_token(SECRET, "alice", 3600), create_token(SECRET, "mallory", 3600)),
    "garbage": "v1.x.y",
}


@pytest.mark.parametrize("why", list(BAD_TOKENS))
def test_forged_and_expired_tokens_are_refused_everywhere(srv, why):
    token = BAD_TOKENS[why]
    chat = {"model": "rewardloop", "messages": [{"role": "user", "content": "hi"}]}
    for method, path, body in [("POST", "/v1/chat/completions", chat), ("POST", "/v1/completions", {}),
                               ("POST", "/v1/feedback", {}), ("POST", "/api/opt-out", None),
                               ("GET", "/v1/models", None)]:
        status, out = http(method, srv.url + path, body, token=token)
        if path == "/v1/models":
            continue   # public: the model list names no user data
        assert status == 401 and out["error"]["code"] == "unauthorized", (why, path, status, out)
    with connect(srv.ws_url) as ws:
        ws.send(json.dumps({"type": "hello", "token": token}))
        assert json.loads(ws.recv(timeout=10))["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd.code == CLOSE_AUTH_FAILED


def test_a_user_cannot_touch_another_users_replies_or_sessions(srv, rdb):
    bob = Chat(srv, srv.token("bob"))
    single = bob.ask("my secret plan")["start"]["reply_id"]
    pair = [bob.ask("which one?", candidates=2)["start"]["reply_id"], bob.collect()["start"]["reply_id"]]
    bob_history = rdb.lrange(Keys(srv.prefix).session(bob.session_id), 0, -1)
    events_before = rdb.xlen(Keys(srv.prefix).events)

    eve = Chat(srv, srv.token("eve"), session_id=bob.session_id)          # ask for bob's session
    assert eve.session_id != bob.session_id                              # a fresh one instead
    for kind, value, rid in [("thumbs", 1, single), ("rating", 5, single), ("copy", None, single),
                             ("dwell", 100, single), ("regenerate", None, single), ("choose", pair[1], pair[0])]:
        attacker = Chat(srv, srv.token(f"eve-{kind}"))   # each its own feedback limit (attempts count)
        err = attacker.feedback(rid, kind, value, feedback_id=f"eve-{kind}")
        assert err["type"] == "error" and err["code"] == "forbidden" and err["ref"] == f"eve-{kind}", err
    eve.send({"type": "user_message", "text": "read it", "session_id": bob.session_id, "client_msg_id": "m"})
    assert eve.recv_type("error")["code"] == "unknown_session"
    eve.send({"type": "stop", "reply_id": single})
    assert eve.recv_type("error")["code"] == "unknown_reply"
    eve_token = srv.token("eve")
    status, out = http("POST", srv.url + "/v1/feedback", {"reply_id": single, "kind": "thumbs", "value": -1,
                                                          "feedback_id": "eve-http"}, token=eve_token)
    assert status == 403 and out["error"]["code"] == "forbidden"
    # reading, exporting and replaying sessions is for operators only: a user token gets nothing
    for path in ("/admin/sessions", "/admin/sessions?user=bob", f"/admin/sessions/{bob.session_id}",
                 f"/admin/sessions/{bob.session_id}/view", "/ops/api/state"):
        status, out = http("GET", srv.url + path, token=eve_token)
        assert status == 401 and "bob" not in json.dumps(out), (path, status, out)

    assert rdb.xlen(Keys(srv.prefix).events) == events_before            # nothing of eve's was recorded
    assert rdb.lrange(Keys(srv.prefix).session(bob.session_id), 0, -1) == bob_history
    assert bob.feedback(single, "thumbs", 1)["type"] == "ack"            # bob still can


OPERATOR_ROUTES = [("GET", "/admin/adapters"), ("POST", "/admin/adapters/rollback"),
                   ("POST", "/admin/adapters/1/promote"), ("POST", "/admin/adapters/1/rollback"),
                   ("GET", "/admin/sessions"), ("GET", "/admin/sessions/s_x"), ("GET", "/admin/sessions/s_x/view"),
                   ("GET", "/ops/api/state"), ("GET", "/ops"), ("GET", "/ops?token=wrong")]


@pytest.mark.parametrize("token", [None, "", ADMIN[:-1], ADMIN + "x", "user-token"])
def test_operator_endpoints_refuse_without_the_operator_token(srv, token):
    if token == "user-token":
        token = srv.token("alice")      # a valid user is no operator
    for method, path in OPERATOR_ROUTES:
        status, headers, _ = _raw(srv, method, path, token)
        assert status == 401, (method, path, token, status)
    assert _raw(srv, "GET", "/admin/adapters", ADMIN)[0] == 200


def _raw(srv, method, path, token):
    conn = httpclient.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        resp.read()
        return resp.status, dict(resp.getheaders()), None
    finally:
        conn.close()


def test_the_operator_token_is_compared_in_constant_time(monkeypatch):
    """Both checks (API bearer/cookie, /ops?token=) go through hmac.compare_digest."""
    import hmac
    from types import SimpleNamespace

    from service.api import admin, ops
    from service.api.common import ApiError
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    runtime = SimpleNamespace(settings=SimpleNamespace(admin_token="s3cret"))
    app = SimpleNamespace(state=SimpleNamespace(runtime=runtime))
    req = Request({"type": "http", "method": "GET", "path": "/admin/adapters", "app": app, "query_string": b"",
                   "headers": [(b"authorization", b"Bearer s3creT")]})
    with pytest.raises(ApiError):
        admin.require_operator(req)
    assert calls == [(b"s3creT", b"s3cret")]
    assert "hmac.compare_digest(token.encode(), expected.encode())" in open(ops.__file__).read()


def test_anonymous_tokens_are_rate_limited_per_client_address(srv):
    answers = [_from(srv, "127.0.0.2", "POST", "/api/session") for _ in range(4)]
    assert [s for s, _, _ in answers] == [200, 200, 200, 429]
    status, headers, body = answers[-1]
    assert int(headers["retry-after"]) >= 1 and body["error"]["code"] == "rate_limited"
    assert _from(srv, "127.0.0.3", "POST", "/api/session")[0] == 200     # another address: its own limit
    token = answers[0][2]["token"]
    chat = Chat(srv, token)                                              # tokens given out still work
    assert chat.ready["user_id"] == answers[0][2]["user_id"]


def test_anonymous_sessions_can_be_switched_off(server_factory):
    off = server_factory(REWARDLOOP_ANONYMOUS=0)
    status, body = http("POST", off.url + "/api/session")
    assert status == 403 and body["error"]["code"] == "anonymous_disabled" and "REWARDLOOP_ANONYMOUS" in \
        body["error"]["message"]
    assert Chat(off, off.token("signed-in")).ask("hi")["end"]["n_tokens"] > 0   # minted tokens still serve


def test_one_feedback_limit_per_user_over_websocket_and_http(srv, rdb):
    token = srv.token("carol")
    first, second = Chat(srv, token), Chat(srv, token)
    reply = first.ask("hello")["start"]["reply_id"]
    acked = [first.feedback(reply, "dwell", 10 + i, f"ws1-{i}")["type"] for i in range(2)]
    acked.append(second.feedback(reply, "dwell", 20, "ws2-0")["type"])
    for i in range(BURST - 3):
        status, _ = http("POST", srv.url + "/v1/feedback", {"reply_id": reply, "kind": "dwell", "value": 30,
                                                            "feedback_id": f"http-{i}"}, token=token)
        acked.append("ack" if status == 200 else status)
    assert acked == ["ack"] * BURST
    # the user's burst is spent, whichever way the next one comes
    status, headers, _ = _post_feedback(srv, token, reply, "http-over")
    assert status == 429 and int(headers["retry-after"]) >= 1
    for chat in (first, second):
        err = chat.feedback(reply, "copy", feedback_id="ws-over")
        assert err["code"] == "rate_limited" and err["ref"] == "ws-over" and err["retry_after"] > 0
    stored = [f["feedback_id"] for _, f in rdb.xrange(Keys(srv.prefix).events) if f.get("user_id") == "carol"
              and f.get("feedback_id")]
    assert len(stored) == BURST and "ws-over" not in stored and "http-over" not in stored
    other = Chat(srv, srv.token("dave"))                                   # others keep their own limit
    mine = other.ask("hi")["start"]["reply_id"]
    assert other.feedback(mine, "thumbs", 1)["type"] == "ack"


def _post_feedback(srv, token, reply, fid):
    conn = httpclient.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("POST", "/v1/feedback", body=json.dumps({"reply_id": reply, "kind": "copy", "feedback_id": fid}),
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(resp.read())
    finally:
        conn.close()


def test_oversized_frames_and_bodies_are_refused_alone(srv):
    chat = Chat(srv, srv.token("frank"))
    chat.send({"type": "user_message", "text": "x" * 200_000, "client_msg_id": "big"})
    err = chat.recv_type("error")
    assert err["code"] == "too_large" and "8192" in err["message"]
    chat.send("[" * 4000 + "]" * 4000)                                   # deep nesting, under the size limit
    assert chat.recv_type("error")["code"] in ("bad_json", "bad_value")
    assert chat.ask("still here?")["end"]["n_tokens"] > 0
    with connect(srv.ws_url, max_size=None) as ws:                       # past uvicorn's 16 MiB frame cap
        ws.send(json.dumps({"type": "hello", "token": srv.token("frank")}))
        ws.recv(timeout=10)
        with pytest.raises(ConnectionClosed):
            ws.send("x" * (17 * 2 ** 20))
            ws.recv(timeout=30)
    # just over the 64 KiB body limit: small enough to be sent whole before the 413 (a 1 MiB body
    # raced the server's early answer and could end in a broken pipe instead)
    status, out = http("POST", srv.url + "/v1/feedback", raw=b"{" + b" " * 70_000 + b"}",
                       token=srv.token("frank"))
    assert status == 413 and out["error"]["code"] == "too_large"
    deep = b'{"a":' + b"[" * 20_000 + b"]" * 20_000 + b"}"              # under the body limit, 20k deep
    for path in ("/v1/feedback", "/v1/chat/completions", "/v1/completions"):
        status, out = http("POST", srv.url + path, raw=deep, token=srv.token("frank"))
        assert status == 400, (path, status, out)     # a clear refusal, never a 500
    assert chat.ask("and now?")["end"]["n_tokens"] > 0                   # the others never noticed
