"""An acknowledged feedback survives the embedded Redis being killed with SIGKILL."""
from __future__ import annotations

import time

import pytest
import redis

from service.embedded_redis import EmbeddedRedis
from tests.helpers import Chat, ServerProc, base_env, free_port

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
