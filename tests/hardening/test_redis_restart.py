"""Redis (embedded, append-only, fsync always) killed with SIGKILL and restarted on the same
port while a server runs: no request answers 500, a chat streaming meanwhile ends normally,
feedback sent while Redis is away gets a retryable error and, resent, is stored exactly once;
every acknowledged feedback is on disk."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
import redis

from core.embedded_redis import EmbeddedRedis
from tests.support.clients import Chat, http
from tests.support.processes import ADMIN, ServerProc, base_env, free_port

pytestmark = pytest.mark.integration
PREFIX = "rr:"
OUTAGE_S = 3.0


def _probe(srv: ServerProc, token: str, reply_id: str, fid: str) -> dict[str, tuple[int, dict]]:
    """One request on every route that talks to Redis (each on its own pooled connection)."""
    chat = {"model": "rewardloop", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return {
        "feedback": http("POST", srv.url + "/v1/feedback", {"reply_id": reply_id, "kind": "copy",
                                                             "feedback_id": fid}, token=token, timeout=20),
        "chat": http("POST", srv.url + "/v1/chat/completions", chat, token=token, timeout=20),
        "sessions": http("GET", srv.url + "/admin/sessions", token=ADMIN, timeout=20),
        "adapters": http("GET", srv.url + "/admin/adapters", token=ADMIN, timeout=20),
        "readyz": http("GET", srv.url + "/readyz", timeout=20),
    }


def _retry_after(srv: ServerProc, token: str, reply_id: str) -> int:
    """Retry-After of a POST /v1/feedback refused while Redis is away."""
    body = json.dumps({"reply_id": reply_id, "kind": "copy", "feedback_id": "down-http"}).encode()
    req = urllib.request.Request(srv.url + "/v1/feedback", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=20)
    assert err.value.code == 503
    return int(err.value.headers["Retry-After"])


def _retryable(status: int, body: dict) -> bool:
    return status == 503 and body.get("error", body).get("code", body.get("status")) in ("unavailable", "not_ready")


def test_redis_kill_9_and_restart_mid_run(tmp_path, models_dir):
    store = EmbeddedRedis(tmp_path / "data")
    store.start()
    srv = ServerProc(base_env(store.url, PREFIX, tmp_path / "data", REWARDLOOP_MAX_NEW_TOKENS=400,
                              REWARDLOOP_CONTEXT_BUDGET=1024, REWARDLOOP_TEMPERATURE=1.0),
                     free_port(), tmp_path / "server.log", prefix=PREFIX).start()
    restarted = None
    try:
        token = srv.token("rita")
        chat = Chat(srv, token)
        reply_id = chat.ask("hello")["start"]["reply_id"]
        warm = _probe(srv, token, reply_id, "warm")           # every pool holds a connection now
        assert {k: s for k, (s, _) in warm.items()} == dict.fromkeys(warm, 200), warm
        acked = ["warm"]
        for i in range(20):
            assert chat.feedback(reply_id, "dwell", 100 + i, f"before{i}")["type"] == "ack"
            acked.append(f"before{i}")

        # a reply streams while Redis dies
        streaming = Chat(srv, srv.token("sam"))
        streaming.send({"type": "user_message", "text": "tell me a long story", "client_msg_id": "long"})
        start = streaming.recv_type("reply_start")
        ending = Chat(srv, srv.token("una"))
        ending.send({"type": "user_message", "text": "and you?", "client_msg_id": "ends-in-outage"})
        ends = ending.recv_type("reply_start")
        store.kill()
        t_kill = time.monotonic()

        # while Redis is away: retryable errors, never a 500, nothing claimed stored
        down = _probe(srv, token, reply_id, "down-http")
        for name, (status, body) in down.items():
            assert status != 500 and _retryable(status, body), (name, status, body)
        assert down["feedback"][0] == 503
        assert _retry_after(srv, token, reply_id) >= 1
        ws_down = chat.feedback(reply_id, "copy", feedback_id="down-ws")
        assert ws_down["type"] == "error" and ws_down["code"] == "unavailable" and ws_down["ref"] == "down-ws"
        chat.send({"type": "user_message", "text": "are you there?", "client_msg_id": "down-msg"})
        refused = chat.recv_type("error")
        assert refused["code"] == "unavailable" and refused["ref"] == "down-msg", refused
        tokens_before = sum(f["type"] == "token" for f in streaming.frames)
        for _ in range(5):   # the reply keeps streaming with Redis away
            assert streaming.recv()["type"] == "token"
        assert sum(f["type"] == "token" for f in streaming.frames) == tokens_before + 5
        ending.send({"type": "stop", "reply_id": ends["reply_id"]})   # this one ends with Redis away
        while time.monotonic() - t_kill < OUTAGE_S:
            time.sleep(0.1)

        restarted = EmbeddedRedis(tmp_path / "data", port=store.port)
        restarted.start()
        outage_s = time.monotonic() - t_kill
        # the reply stopped in the outage waited for Redis (REPLY_SAVE_WAIT_S) and is logged once
        assert ending.recv_type("reply_end")["reply_id"] == ends["reply_id"]

        # the first request on each stale pooled connection: served, or a retryable 503 -- never a 500
        first = _probe(srv, token, reply_id, "first-after")
        for name, (status, body) in first.items():
            assert status == 200 or _retryable(status, body), (name, status, body)
        deadline = time.monotonic() + 20
        while True:   # and soon everything answers 200
            again = _probe(srv, token, reply_id, "first-after")
            if all(s == 200 for s, _ in again.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert all(s == 200 for s, _ in again.values()), again
        acked.append("first-after")

        # the reply that streamed through the outage ended normally and is logged
        streaming.send({"type": "stop", "reply_id": start["reply_id"]})
        end = streaming.recv_type("reply_end")
        assert end["reply_id"] == start["reply_id"]
        assert [f for f in streaming.frames if f["type"] == "error"] == []
        r = redis.Redis.from_url(restarted.url, decode_responses=True)
        assert r.hget(f"{PREFIX}reply:{start['reply_id']}", "user_id") == "sam"
        assert r.hget(f"{PREFIX}reply:{ends['reply_id']}", "user_id") == "una"
        assert r.lrange(f"{PREFIX}session:{ending.session_id}", 0, -1) == [ends["reply_id"]]
        logged = [f["reply_id"] for _, f in r.xrange(f"{PREFIX}events") if f.get("kind") == "reply"]
        assert logged.count(ends["reply_id"]) == 1

        # the feedback refused meanwhile, resent: stored exactly once; a second resend is a duplicate
        status, body = http("POST", srv.url + "/v1/feedback", {"reply_id": reply_id, "kind": "copy",
                                                                "feedback_id": "down-http"}, token=token)
        assert status == 200 and body["duplicate"] is False
        resent = chat.feedback(reply_id, "copy", feedback_id="down-ws")
        assert resent["type"] == "ack" and resent["duplicate"] is False
        assert chat.feedback(reply_id, "copy", feedback_id="down-ws")["duplicate"] is True
        acked += ["down-http", "down-ws"]

        stored = [f["feedback_id"] for _, f in r.xrange(f"{PREFIX}events") if f.get("feedback_id")]
        assert sorted(stored) == sorted(acked), "every acknowledged feedback stored, each exactly once"
        print(f"\noutage {outage_s:.1f} s; {len(acked)} feedbacks acked = stored; first requests after restart: "
              + ", ".join(f"{k} {s}" for k, (s, _) in first.items()))
    finally:
        srv.stop()
        if restarted:
            restarted.stop()
        store.stop()
