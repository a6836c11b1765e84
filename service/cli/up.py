"""`rewardloop up`: every part of a deployment on one machine, supervised.

N servers on consecutive ports from --port, M reward workers (each one process with its own
event consumer, on the `rewards` and `ops` queues), one learner worker on `learn` (one run at
a time), one beat, all on the embedded Redis or REWARDLOOP_REDIS_URL and sharing the data dir
(the adapters). A part that dies is restarted, as an orchestrator would; one that keeps dying
stops everything. Ctrl-C stops them all.

The operator page needs a token: unless REWARDLOOP_ADMIN_TOKEN is set, `up` creates one once
into DATA_DIR/operator_token (mode 600, like a notebook server's token), gives it to the parts
it starts, and prints the /ops URL that carries it beside the chat URL.
"""
from __future__ import annotations

import argparse
import http.client
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from core.settings import Settings

RESTARTS_PER_MINUTE = 3  # more than this and the part is broken, not unlucky: stop everything


def add_up_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--servers", type=_at_least_one("--servers"), default=1, metavar="N",
                   help="server processes, on consecutive ports from --port (default 1)")
    p.add_argument("--workers", type=_at_least_one("--workers"), default=1, metavar="M",
                   help="reward worker processes (default 1); a learner worker and beat come with them")
    p.add_argument("--engine", choices=("local", "vllm"), default=None,
                   help="generation engine (REWARDLOOP_ENGINE): vllm uses REWARDLOOP_VLLM_URLS or, unset, starts "
                   "one vLLM server as a child on the model")


def _at_least_one(flag: str):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a whole number, got {text!r}") from None
        if not 1 <= n <= 64:
            raise argparse.ArgumentTypeError(f"{flag} must be between 1 and 64, got {n}")
        return n
    return parse


@dataclass
class Part:
    name: str
    argv: list[str]          # after `rewardloop`
    url: str | None = None   # servers: their base URL
    proc: subprocess.Popen | None = None
    exits: list[float] = field(default_factory=list)


def plan(settings: Settings, servers: int, workers: int, with_workers: bool = True) -> list[Part]:
    """What `up` runs (pure): servers first, in port order."""
    parts = [Part(f"server {i + 1}", ["serve", "--port", str(settings.port + i)],
                  url=f"http://{settings.host}:{settings.port + i}") for i in range(servers)]
    if with_workers:
        parts += [Part(f"reward worker {i + 1}", ["worker", "--queues", "rewards,ops", "--concurrency", "1"])
                  for i in range(workers)]
        parts += [Part("learner worker", ["worker", "--queues", "learn", "--concurrency", "1"]), Part("beat", ["beat"])]
    return parts


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
            return resp.status == 200
    except (OSError, http.client.HTTPException):  # not up yet, or something else holds the port
        return False


def _start(part: Part, env: dict) -> None:
    part.proc = subprocess.Popen([sys.executable, "-m", "service.cli", *part.argv], env=env)


def _stop(parts: list[Part]) -> None:
    live = [p.proc for p in parts if p.proc and p.proc.poll() is None]
    for proc in live:
        proc.send_signal(signal.SIGINT)
    for proc in live:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_servers(parts: list[Part], timeout: float) -> Part | None:
    """None when every server answers /readyz, else the first one that exited or never did."""
    deadline = time.monotonic() + timeout
    waiting = [p for p in parts if p.url]
    while waiting and time.monotonic() < deadline:
        for p in list(waiting):
            if p.proc.poll() is not None:
                return p
            if _ready(p.url):
                waiting.remove(p)
        time.sleep(0.3)
    return waiting[0] if waiting else None


def ensure_operator_token(settings: Settings) -> str:
    """REWARDLOOP_ADMIN_TOKEN, or one created once into DATA_DIR/operator_token (mode 600)."""
    if settings.admin_token:
        return settings.admin_token
    path = Path(settings.data_dir) / "operator_token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:   # another `up` made it meanwhile: use theirs
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def supervise(parts: list[Part], env: dict, redis_url: str, settings: Settings) -> int:
    from service.runtime import ensure_secret
    ensure_secret(settings)  # before the servers start: they would race to create it
    for part in parts:
        _start(part, env)
    try:
        bad = _wait_servers(parts, timeout=600)
        if bad:
            print(f"rewardloop up: {bad.name} ({bad.url}) did not become ready; see the log above", file=sys.stderr)
            return 1
        first = next(p for p in parts if p.url)
        print(f"\n  rewardloop is up: {first.url}/   (Redis {redis_url}; Ctrl-C stops everything)", flush=True)
        print(f"  operator page:    {first.url}/ops?token={env['REWARDLOOP_ADMIN_TOKEN']}", flush=True)
        for p in parts:
            print(f"    {p.name:<16} {p.url + '/' if p.url else ' '.join(p.argv):<40} pid {p.proc.pid}", flush=True)
        print(flush=True)
        while True:
            time.sleep(0.5)
            for part in parts:
                code = part.proc.poll()
                if code is None:
                    continue
                now = time.monotonic()
                part.exits = [t for t in part.exits if now - t < 60] + [now]
                if len(part.exits) > RESTARTS_PER_MINUTE:
                    print(f"rewardloop up: {part.name} exited {len(part.exits)} times within a minute (last "
                          f"code {code}); stopping everything", file=sys.stderr)
                    return 1
                print(f"rewardloop up: {part.name} exited with code {code}; restarting it", file=sys.stderr,
                      flush=True)
                _start(part, env)
    except KeyboardInterrupt:
        print("\nrewardloop up: stopping", file=sys.stderr)
        return 0
    finally:
        _stop(parts)


def cmd_up(args, settings: Settings) -> int:
    from core.modeling import resolve_model_path
    from service.cli.commands import redis_for
    # Convert the model here, in the foreground, so the progress bar is visible.
    resolve_model_path(settings.model, settings.models_dir)
    with redis_for(settings) as url:
        env = {**os.environ, "REWARDLOOP_REDIS_URL": url, "REWARDLOOP_MODEL": settings.model,
               "REWARDLOOP_HOST": settings.host, "REWARDLOOP_PORT": str(settings.port),
               "REWARDLOOP_DATA_DIR": str(settings.data_dir),
               "REWARDLOOP_ADMIN_TOKEN": ensure_operator_token(settings)}
        from service.cli.vllm_child import vllm_for_up
        with vllm_for_up(settings, getattr(args, "engine", None) or settings.engine, env):
            return supervise(plan(settings, args.servers, args.workers, not args.no_worker), env, url, settings)
