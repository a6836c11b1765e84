"""`rewardloop up --engine vllm`: it starts a vLLM server as a child (vLLM's CPU build from
`.venv-vllm`, on the model REWARDLOOP_MODEL names), the servers it starts generate through it,
and Ctrl-C stops all of it, the vLLM child included."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from core.keys import Keys
from tests.support.clients import Chat, http
from tests.support.processes import ADMIN, REPO, base_env, ctrl_c_stops_everything, free_port
from tests.support.vllm_servers import require_vllm

pytestmark = pytest.mark.integration


def test_up_engine_vllm_starts_vllm_serves_through_it_and_ctrl_c_stops_it(tmp_path, models_dir, redis_url,
                                                                           prefix, rdb):
    require_vllm()
    port, vport = free_port(), free_port()
    env = base_env(redis_url, prefix, tmp_path, REWARDLOOP_PORT=port, REWARDLOOP_VLLM_PORT=vport,
                   REWARDLOOP_CONTEXT_BUDGET=2048, VLLM_CPU_KVCACHE_SPACE=1)
    log = tmp_path / "up.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "up", "--engine", "vllm", "--no-worker"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 500
        while time.monotonic() < deadline and proc.poll() is None and "rewardloop is up" not in log.read_text():
            time.sleep(0.5)
        text = log.read_text()
        assert "rewardloop is up" in text, text[-4000:]
        started = re.search(r"rewardloop up: starting vLLM: (.*)", text).group(1)
        assert "vllm.entrypoints.openai.api_server" in started and f"--port {vport}" in started
        assert "--enable-lora" in started and "--logprobs-mode processed_logprobs" in started
        assert "--max-model-len 2048" in started
        assert f"rewardloop up: vLLM is up on http://127.0.0.1:{vport}" in text

        code, body = http("GET", f"http://127.0.0.1:{port}/admin/adapters", token=ADMIN)
        assert code == 200, body
        assert body["server"]["engine"] == "vllm"
        assert [s["url"] for s in body["server"]["servers"]] == [f"http://127.0.0.1:{vport}"]

        from service.serving.auth import create_token
        from tests.support.processes import SECRET
        chat = Chat(SimpleNamespace(ws_url=f"ws://127.0.0.1:{port}/ws/chat"), create_token(SECRET, "alice", 3600))
        reply = chat.ask("Say hello.")
        chat.close()
        record = rdb.hgetall(Keys(prefix).reply(reply['start']['reply_id']))
        assert record and record["text"] == reply["text"]
        assert int(record["n_tokens"]) == len(json.loads(record["logprobs"])) > 0   # vLLM's behavior log-probs
        assert reply["end"]["finish_reason"] in ("stop", "length")

        ctrl_c_stops_everything(proc, {"the server": port, "the vLLM child": vport}, timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
