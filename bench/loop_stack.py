"""The deployment bench/loop.py chats with: the very parts `rewardloop up` starts (one server,
one reward worker on rewards+ops, the learner worker on `learn`, beat), each a subprocess with
its log under the run's folder, on an embedded Redis and a free port. Settings come only from
documented environment variables: the shipped defaults plus what `deployment_env` says a small
deployment changes, plus --env.

LearnerWatch samples, every half second while the loop runs: whether a learner run holds the
learner lock (the same key the servers look at), the learner worker's resident memory (its
process tree, psutil), and each finished run (`learn:last_run`) with what serves after it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.keys import Keys
from core.registry import Registry
from tests.support.processes import ADMIN, MODELS, REPO, SECRET, ServerProc, free_port

PREFIX = "loop:"   # ServerProc.token() signs user tokens with tests.support.processes.SECRET


def deployment_env(url: str, data: Path, port: int, model: str, settings: dict[str, str]) -> dict:
    """The process environment: this machine's, without any REWARDLOOP_* of the caller's, plus
    the deployment's settings (all documented REWARDLOOP_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDLOOP_")}
    env.update({"REWARDLOOP_REDIS_URL": url, "REWARDLOOP_PREFIX": PREFIX, "REWARDLOOP_DATA_DIR": str(data),
                "REWARDLOOP_MODEL_CACHE": str(MODELS), "REWARDLOOP_MODEL": model, "REWARDLOOP_SECRET": SECRET,
                "REWARDLOOP_ADMIN_TOKEN": ADMIN, "REWARDLOOP_PORT": str(port), "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in settings.items()})
    return env


@dataclass
class Stack:
    work: Path
    model: str
    settings: dict[str, str]
    url: str = ""
    server: ServerProc | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    embedded: object = None

    def start(self) -> Stack:
        from core.embedded_redis import EmbeddedRedis
        from core.settings import Settings
        from service.cli.up import plan
        self.embedded = EmbeddedRedis(self.work / "redis")
        self.url = self.embedded.start()
        data = self.work / "data"
        data.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = deployment_env(self.url, data, port, self.model, self.settings)
        parts = plan(Settings(port=port), servers=1, workers=1)   # what `rewardloop up` runs
        try:
            for part in parts:
                if part.url:
                    continue
                log = open(self.work / f"{part.name.replace(' ', '_')}.log", "wb")
                self.procs[part.name] = subprocess.Popen([sys.executable, "-m", "service.cli", *part.argv], env=env,
                                                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            self.server = ServerProc(env, port, self.work / "server.log", prefix=PREFIX).start(timeout=900)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def learner_pid(self) -> int:
        return self.procs["learner worker"].pid

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = self.work / f"{name.replace(' ', '_')}.log"
                raise RuntimeError(f"{name} exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.embedded is not None:
            self.embedded.stop()


def tree_rss(pid: int) -> tuple[int, int]:
    """(sum, largest) resident bytes of a process and its children; (0, 0) once it is gone."""
    import psutil
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    sizes = []
    for p in procs:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.Error:
            pass
    return sum(sizes), max(sizes, default=0)


@dataclass
class LearnerWatch:
    """A thread that records learner-lock intervals, the learner worker's peak RSS and each run."""
    r: object
    keys: Keys
    data_dir: Path
    learner_pid: int
    replies: callable          # () -> replies served so far (the bench's count)
    every_s: float = 0.5
    intervals: list = field(default_factory=list)    # [start, end] of learner runs (lock held)
    runs: list = field(default_factory=list)
    rss_peak: int = 0
    rss_largest: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> LearnerWatch:
        self._thread = threading.Thread(target=self._loop, name="learner-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.intervals and self.intervals[-1][1] is None:
            self.intervals[-1][1] = time.time()

    def training_at(self, t: float) -> bool:
        return any(a <= t <= (b or float("inf")) for a, b in self.intervals)

    def _loop(self) -> None:
        last_finished = None
        while not self._stop.wait(self.every_s):
            try:
                held, now = bool(self.r.exists(self.keys.learn_lock)), time.time()
                if held and (not self.intervals or self.intervals[-1][1] is not None):
                    self.intervals.append([now, None])
                elif not held and self.intervals and self.intervals[-1][1] is None:
                    self.intervals[-1][1] = now
                total, largest = tree_rss(self.learner_pid)
                self.rss_peak, self.rss_largest = max(self.rss_peak, total), max(self.rss_largest, largest)
                last = self.r.hgetall(self.keys.learn_last_run)
                if last and last.get("finished_at") != last_finished:
                    last_finished = last.get("finished_at")
                    self._record_run(last, now)
            except Exception as exc:   # a bench thread: report and keep watching
                print(f"learner watch: {exc!r}", flush=True)

    def _record_run(self, last: dict, now: float) -> None:
        state = Registry(self.r, self.keys, self.data_dir).state()
        self.runs.append({"state": last.get("state"), "version": last.get("version") or None,
                          "reason": last.get("reason"), "finished_at": float(last.get("finished_at") or now),
                          "stable": state["stable"], "canary": state["canary"],
                          "newest_served": state["canary"] or state["stable"], "replies_before": self.replies(),
                          "lock_interval": list(self.intervals[-1]) if self.intervals else None})
        print(f"learner run {len(self.runs)}: {last.get('state')} v{last.get('version') or '-'} "
              f"{(last.get('reason') or '')[:120]} | serving stable {state['stable']} canary {state['canary'] or '-'} "
              f"| {self.replies()} replies so far", flush=True)
