"""REWARDLOOP_DTYPE: the built-in engine serves in bfloat16 on a CPU when asked (auto stays
float32 there: bench/cpu_dtype.py), streams and logs real behavior log-probs, and says so."""
from __future__ import annotations

import json
import math

import pytest

from core.keys import Keys
from core.settings import ServerSettings
from tests.support.clients import Chat, http
from tests.support.processes import ADMIN

pytestmark = pytest.mark.integration


def test_a_bf16_server_on_the_cpu_streams_logs_and_reports_its_dtype(server_factory, rdb):
    srv = server_factory(REWARDLOOP_DTYPE="bfloat16", REWARDLOOP_MAX_NEW_TOKENS=16)
    code, body = http("GET", srv.url + "/admin/adapters", token=ADMIN)
    assert code == 200 and body["server"]["dtype"] == "bfloat16" and body["server"]["device"] == "cpu", body
    chats = [Chat(srv, srv.token(f"bf{i}")) for i in range(2)]
    for c in chats:   # two at once: one batched decode step in bf16
        c.send({"type": "user_message", "text": "Say hello.", "client_msg_id": "m1"})
    for c in chats:
        reply = c.collect()
        c.close()
        h = rdb.hgetall(Keys(srv.prefix).reply(reply['start']['reply_id']))
        lps = json.loads(h["logprobs"])
        assert h["text"] == reply["text"] and len(lps) == int(h["n_tokens"]) > 0
        assert all(math.isfinite(x) and x <= 0 for x in lps) and any(x < 0 for x in lps)


def test_the_default_server_is_float32_on_a_cpu_and_a_bad_dtype_is_named():
    assert ServerSettings().dtype == "auto"
    from core.modeling import pick_device
    assert str(pick_device("cpu")[1]) == "torch.float32" and str(pick_device("cpu", "bfloat16")[1]) == "torch.bfloat16"
    with pytest.raises(ValueError, match="REWARDLOOP_DTYPE"):
        ServerSettings(dtype="fp16")
