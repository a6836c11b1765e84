"""An acknowledged feedback survives the embedded Redis being killed with SIGKILL."""
from __future__ import annotations

import time

import pytest
import redis

from core.embedded_redis import EmbeddedRedis
from tests.support.clients import Chat
from tests.support.processes import ServerProc, base_env, free_port

pytestmark = pytest.mark.integration


def test_every_acknowledged_event_survives_kill_9(tmp_path, models_dir):
    store = EmbeddedRedis(tmp_path / "data")
    store.start()
    srv = ServerProc(base_env(store.url, "dur:", tmp_path / "data", REWARDLOOP_FEEDBACK_BURST=500), free_port(), tmp_path / "server.log",
                     prefix="dur:").start()
    try:
        chat = Chat(srv, srv.token("nina"))
        reply_id = chat.ask("hello")["start"]["reply_id"]
        acked = []
        for i in range(50):
            frame = chat.feedback(reply_id, "dwell", 100 + i, f"d{i}")
            assert frame["type"] == "ack"
            acked.append(f"d{i}")
        store.kill()                                     # no shutdown, no final fsync
        # while Redis is away: a clear error, the connection stays up, nothing is claimed stored
        down = chat.feedback(reply_id, "copy", feedback_id="during")
        assert down["type"] == "error" and down["code"] == "unavailable" and down["ref"] == "during"
        restarted = EmbeddedRedis(tmp_path / "data", port=store.port)
        restarted.start()
        try:
            r = redis.Redis.from_url(restarted.url, decode_responses=True)
            stored = [f["feedback_id"] for _, f in r.xrange("dur:events") if f.get("kind") == "dwell"]
            assert stored == acked
            assert r.hget(f"dur:reply:{reply_id}", "user_id") == "nina"
            # the server reconnects by itself once Redis is back
            deadline = time.monotonic() + 20
            while True:
                frame = chat.feedback(reply_id, "copy", feedback_id="after")
                if frame["type"] == "ack" or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert frame["type"] == "ack"
            retried = chat.feedback(reply_id, "copy", feedback_id="during")   # the client's retry
            assert retried["type"] == "ack" and retried["duplicate"] is False
        finally:
            restarted.stop()
    finally:
        srv.stop()
        store.stop()


def test_pipelined_feedback_acked_before_kill_9_is_all_there(tmp_path, models_dir):
    """Many feedbacks in flight on one connection (written in batches): Redis dies mid-way.
    Each feedback gets exactly one answer; every ack is on disk; the rest say 'unavailable'."""
    store = EmbeddedRedis(tmp_path / "data")
    store.start()
    srv = ServerProc(base_env(store.url, "dur:", tmp_path / "data", REWARDLOOP_FEEDBACK_BURST=5000,
                              REWARDLOOP_FEEDBACK_RATE=5000), free_port(), tmp_path / "server.log",
                     prefix="dur:").start()
    try:
        chat = Chat(srv, srv.token("nina"))
        reply_id = chat.ask("hello")["start"]["reply_id"]
        sent = [f"p{i}" for i in range(1500)]
        for fid in sent:
            chat.send({"type": "feedback", "feedback_id": fid, "reply_id": reply_id, "kind": "dwell", "value": 5})
        answers: dict[str, str] = {}
        while len(answers) < 100:
            f = chat.recv()
            answers[f.get("feedback_id") or f.get("ref")] = f["type"]
        store.kill()
        while len(answers) < len(sent):
            f = chat.recv(timeout=30)
            fid = f.get("feedback_id") or f.get("ref")
            assert fid not in answers, f"two answers for {fid}"
            assert f["type"] == "ack" or f["code"] == "unavailable", f
            answers[fid] = f["type"]
        acked = [fid for fid in sent if answers[fid] == "ack"]
        assert 100 <= len(acked)
        restarted = EmbeddedRedis(tmp_path / "data", port=store.port)
        restarted.start()
        try:
            r = redis.Redis.from_url(restarted.url, decode_responses=True)
            stored = [f["feedback_id"] for _, f in r.xrange("dur:events") if f.get("kind") == "dwell"]
            assert set(acked) <= set(stored)                       # nothing acknowledged is lost
            assert stored == [fid for fid in sent if fid in set(stored)]   # stored in the order sent, once each
        finally:
            restarted.stop()
    finally:
        srv.stop()
        store.stop()
