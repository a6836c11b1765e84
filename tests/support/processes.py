"""Real processes on free ports: `rewardloop serve` servers, worker/beat processes, `up`. No
mocks of Redis or Celery: a test talks to what a user would run."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.embedded_redis import free_port
from core.keys import Keys
from tests.support.clients import http

REPO = Path(__file__).resolve().parent.parent.parent
MODELS = REPO / "var" / "models"   # converted models are cached here across test runs
SECRET = "test-secret-not-for-production"
ADMIN = "test-admin-token"
FAST = {  # worker and beat periods short enough that a test sees a full cycle in seconds
    "REWARDLOOP_WORKER_EVENTS_EVERY_S": "0.5", "REWARDLOOP_WORKER_FINALIZE_EVERY_S": "1",
    "REWARDLOOP_WORKER_RECLAIM_EVERY_S": "1", "REWARDLOOP_WORKER_RECLAIM_IDLE_S": "2",
    "REWARDLOOP_WORKER_ABANDON_EVERY_S": "1", "REWARDLOOP_BEAT_LOCK_TTL_S": "3",
}


def base_env(redis_url: str, prefix: str, data_dir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDLOOP_")}
    env.update({
        "REWARDLOOP_REDIS_URL": redis_url, "REWARDLOOP_PREFIX": prefix, "REWARDLOOP_DATA_DIR": str(data_dir),
        "REWARDLOOP_MODEL_CACHE": str(MODELS), "REWARDLOOP_MODEL": "tiny-random", "REWARDLOOP_SECRET": SECRET,
        "REWARDLOOP_ADMIN_TOKEN": ADMIN, "REWARDLOOP_MAX_NEW_TOKENS": "12", "REWARDLOOP_HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
        # the tiny random model's word salad sometimes reads as unsafe to the default scorer, which
        # would veto a thumbs up at random; tests of safety scoring turn it back on
        "REWARDLOOP_REPLY_SAFETY": "0",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


class _Urls:
    """The URLs of a server listening on 127.0.0.1:`port`."""
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat"


@dataclass
class Endpoint(_Urls):
    """A server another process started (`up`): what Chat and http need of it."""
    port: int


@dataclass
class ServerProc(_Urls):
    """A `rewardloop serve` process this test started."""
    env: dict
    port: int
    log_path: Path
    prefix: str = "rl:"
    proc: subprocess.Popen | None = None

    @property
    def keys(self) -> Keys:
        """The server's Redis keys (its prefix)."""
        return Keys(self.prefix)

    def logs(self) -> str:
        """The server's log so far, for a failing test's message (tests.support.waiting)."""
        return f"--- {self.log_path.name}\n" + self.log_path.read_text(errors="replace")

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


def server_starter(redis_url: str, tmp_path: Path):
    """(start, started): start(prefix=None, **env) runs a server with its own data folder and key
    prefix (a fresh one unless given) and env overrides; the caller stops `started`."""
    started: list[ServerProc] = []

    def start(prefix: str | None = None, **env) -> ServerProc:
        prefix = prefix or f"t{secrets.token_hex(4)}:"
        data = tmp_path / f"data{len(started)}"
        data.mkdir()
        proc = ServerProc(base_env(redis_url, prefix, data, **env), free_port(),
                          tmp_path / f"server{len(started)}.log", prefix=prefix)
        started.append(proc)
        return proc.start()
    return start, started


class Procs:
    """Start `python -m service.cli ...` processes in their own process groups (so kill -9
    takes a prefork worker's children too); all are killed at teardown."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, env: dict, *argv: str) -> subprocess.Popen:
        log = self.tmp / f"{argv[0]}{len(self.started)}.log"
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", *argv], env=env, cwd=REPO,
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((proc, log))
        return proc

    def kill9(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for _, log in self.started)

    def stop_all(self) -> None:
        for proc, _ in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in self.started:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ctrl_c_stops_everything(proc: subprocess.Popen, ports: dict[str, int], timeout: float = 60) -> None:
    """Ctrl-C to `up`'s process group; then none of `ports` ({what: port}) listens and nothing of the group is left."""
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout)
    time.sleep(1.0)
    still = [what for what, port in ports.items() if port_open(port)]
    assert still == [], f"still running after Ctrl-C: {still}"
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
