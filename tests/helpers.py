"""Test helpers: real processes (uvicorn servers, Celery workers) on free ports, and a
small synchronous websocket client. No mocks of Redis or Celery."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from websockets.sync.client import connect

from core.embedded_redis import free_port  # noqa: F401 (the tests take free ports from here)

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "var" / "models"   # converted models are cached here across test runs
SECRET = "test-secret-not-for-production"
ADMIN = "test-admin-token"


def base_env(redis_url: str, prefix: str, data_dir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDLOOP_")}
    env.update({
        "REWARDLOOP_REDIS_URL": redis_url, "REWARDLOOP_PREFIX": prefix, "REWARDLOOP_DATA_DIR": str(data_dir),
        "REWARDLOOP_MODEL_CACHE": str(MODELS), "REWARDLOOP_MODEL": "tiny-random", "REWARDLOOP_SECRET": SECRET,
        "REWARDLOOP_ADMIN_TOKEN": ADMIN, "REWARDLOOP_MAX_NEW_TOKENS": "12", "REWARDLOOP_HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def http(method: str, url: str, body: dict | None = None, token: str | None = None,
         raw: bytes | None = None, timeout: float = 60) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@dataclass
class ServerProc:
    env: dict
    port: int
    log_path: Path
    prefix: str = "rl:"
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat"

    def start(self, timeout: float = 120) -> ServerProc:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
                                     env=self.env, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if http("GET", self.url + "/readyz", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def token(self, user: str = "alice") -> str:
        from service.serving.auth import create_token
        return create_token(SECRET, user, 3600)


class Chat:
    """A websocket chat client that remembers every frame it received."""

    def __init__(self, server: ServerProc, token: str, session_id: str | None = None):
        # max_queue=None buffers every frame as a browser does: with the default 16, a test that sits
        # on a long stream stops reading the socket, the server's pong waits behind the tokens and the
        # client's keepalive drops the connection after 20 s (seen on a busy CI machine).
        self.ws = connect(server.ws_url, open_timeout=10, max_size=2 ** 22, max_queue=None).__enter__()
        self.frames: list[dict] = []
        hello = {"type": "hello", "token": token}
        if session_id:
            hello["session_id"] = session_id
        self.send(hello)
        self.ready = self.recv_type("ready")
        self.session_id = self.ready["session_id"]

    def send(self, frame: dict | str) -> None:
        self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def recv(self, timeout: float = 60) -> dict:
        frame = json.loads(self.ws.recv(timeout=timeout))
        self.frames.append(frame)
        return frame

    def recv_type(self, kind: str, timeout: float = 60) -> dict:
        while True:
            frame = self.recv(timeout)
            if frame["type"] == kind:
                return frame
            if frame["type"] == "error" and kind != "error":
                raise AssertionError(f"expected {kind}, got error {frame}")

    def ask(self, text: str, **extra) -> dict:
        """Send a message; return {'start', 'text', 'end'} of the (last) reply."""
        self.send({"type": "user_message", "text": text, "client_msg_id": f"m{time.monotonic_ns()}", **extra})
        return self.collect()

    def collect(self) -> dict:
        start = self.recv_type("reply_start")
        text = ""
        while True:
            f = self.recv()
            if f["type"] == "token":
                assert f["reply_id"] == start["reply_id"]
                text += f["text"]
            elif f["type"] == "reply_end":
                return {"start": start, "text": text, "end": f}
            elif f["type"] == "error":
                raise AssertionError(f"error while streaming: {f}")

    def feedback(self, reply_id: str, kind: str, value=None, feedback_id: str | None = None) -> dict:
        fid = feedback_id or f"fb{time.monotonic_ns()}"
        frame = {"type": "feedback", "feedback_id": fid, "reply_id": reply_id, "kind": kind}
        if value is not None:
            frame["value"] = value
        self.send(frame)
        while True:
            f = self.recv()
            if f["type"] in ("ack", "error"):
                return f

    def close(self) -> None:
        self.ws.close()
