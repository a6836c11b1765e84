"""Clients of a running server: JSON over HTTP, plain text pages, the websocket chat, and the
official OpenAI client."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from websockets.sync.client import connect


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


def get(url: str, token: str | None = None) -> tuple[int, str]:
    """A page as text (status, body)."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def openai_client(server, user: str = "mo"):
    """The official OpenAI client on a server's /v1, as `user`; no retries (a test sees every error)."""
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.token(user), max_retries=0)


class Chat:
    """A websocket chat client that remembers every frame it received."""

    def __init__(self, server, token: str, session_id: str | None = None):
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
