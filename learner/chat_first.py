"""Chat first on a shared machine: the learner gives way to the servers it shares a host with.

Every server process writes a heartbeat each second (`Keys.servers`, core/server_load.py: streams
generating, requests waiting for their first token; its id names its host). A run decides at
its start whether it shares the machine (LearnerSettings.learner_machine: 'auto' = a live server
reports from this host name; 'shared'; 'dedicated'). Sharing, it

- lowers its CPU priority (learner_nice, 10, on every thread of the process; new threads inherit it --
  a process cannot raise it back, so it stays for the worker's life) and its torch threads
  (half the cores, at least one; put back after the run);
- waits before each optimizer step while a server it shares with reports streams or a queue,
  at most learner_yield_max_s per step, and records how many steps waited and for how long.

On a machine of its own (a GPU learner, `dedicated`) nothing is throttled.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.server_load import STALE_S, parse_all

log = logging.getLogger(__name__)

POLL_S = 0.2         # how often a waiting learner looks again


def host_of(server_id: str) -> str:
    """The host name in a server's id ("host:pid:start", service/serving/load.py server_id)."""
    return server_id.rsplit(":", 2)[0]


def busy_servers(fields: Mapping[str, str], now: float, host: str | None) -> list[str]:
    """Ids of the servers (of `host` only, unless None) whose fresh heartbeat reports streams
    generating or waiting. Pure."""
    return [sid for sid, load in parse_all(fields).items()
            if load.busy(now, STALE_S) and (host is None or host_of(sid) == host)]


def live_hosts(fields: Mapping[str, str], now: float) -> set[str]:
    """Host names of the servers whose heartbeat is fresh. Pure."""
    return {host_of(sid) for sid, load in parse_all(fields).items() if now - load.at <= STALE_S}


@dataclass
class ChatFirst:
    r: object                # redis.Redis
    keys: object             # Keys
    mode: str                # auto | shared | dedicated
    max_wait_s: float
    nice: int = 10
    host: str = field(default_factory=socket.gethostname)
    shared: bool = False
    why: str = ""
    steps_paused: int = 0
    waited_s: float = 0.0
    steps_seen: int = 0
    _threads: int | None = None

    @classmethod
    def for_run(cls, r, keys, settings) -> ChatFirst:
        return cls(r, keys, settings.learner_machine, settings.learner_yield_max_s, settings.learner_nice)

    def _reports(self) -> dict[str, str]:
        return self.r.hgetall(self.keys.servers)

    def begin(self) -> None:
        """Decide whether this run shares the machine; if it does, step back."""
        if self.mode == "dedicated":
            self.shared, self.why = False, "REWARDLOOP_LEARNER_MACHINE=dedicated"
        elif self.mode == "shared":
            self.shared, self.why = True, "REWARDLOOP_LEARNER_MACHINE=shared"
        else:
            hosts = live_hosts(self._reports(), time.time())
            self.shared = self.host in hosts
            self.why = (f"a live server reports from this host ({self.host})" if self.shared else
                        f"no live server on this host ({self.host}; servers on: {sorted(hosts) or 'none'})")
        log.info("learner %s: %s", "shares the machine with chat" if self.shared else "runs unthrottled", self.why)
        if self.shared:
            self._step_back()

    def _step_back(self) -> None:
        import torch
        lower_priority(self.nice)
        self._threads = torch.get_num_threads()
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))

    def end(self) -> None:
        """Put the torch thread count back (the priority stays: it cannot be raised again)."""
        if self._threads is not None:
            import torch
            torch.set_num_threads(self._threads)
            self._threads = None

    def busy(self) -> bool:
        host = None if self.mode == "shared" else self.host
        return bool(busy_servers(self._reports(), time.time(), host))

    def pause(self) -> None:
        """Before an optimizer step: wait while a server this learner shares with is busy."""
        self.steps_seen += 1
        if not self.shared:
            return
        start = time.monotonic()
        waited = False
        while time.monotonic() - start < self.max_wait_s and self.busy():
            waited = True
            time.sleep(POLL_S)
        if waited:
            self.steps_paused += 1
            self.waited_s += time.monotonic() - start

    def stats(self) -> dict:
        return {"shared": self.shared, "why": self.why, "steps": self.steps_seen, "steps_paused": self.steps_paused,
                "waited_s": round(self.waited_s, 3), "nice": _nice(), "torch_threads": _threads()}


def lower_priority(nice: int) -> None:
    """Raise the nice value of every thread of this process to at least `nice` (Linux keeps it
    per thread; threads started later inherit their creator's)."""
    tasks = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else [str(os.getpid())]
    for tid in tasks:
        try:
            current = os.getpriority(os.PRIO_PROCESS, int(tid))
            if current < nice:
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
        except (OSError, ValueError) as exc:   # a thread that ended meanwhile
            log.debug("could not renice thread %s: %s", tid, exc)


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def _threads() -> int:
    import torch
    return torch.get_num_threads()
