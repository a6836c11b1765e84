"""One way to wait in a test: poll a condition until it holds, and when it never does, fail with
what was awaited and the logs of the processes involved (a server, a worker, `up`), so that a
red CI run says why without a rerun."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Awaitable, Callable, Iterable, TypeVar

T = TypeVar("T")
LogSource = object   # anything with .logs() -> str, a Path to a log file, or a callable returning text


def _sources(logs) -> list:
    """One source or several; None: none."""
    if logs is None:
        return []
    if hasattr(logs, "logs") or isinstance(logs, (Path, str)) or callable(logs):
        return [logs]
    return list(logs)


def logs_of(logs, tail: int = 4000) -> str:
    """The tail of each source's log, one block per source."""
    out = []
    for src in _sources(logs):
        if hasattr(src, "logs"):
            text = src.logs()
        elif isinstance(src, (Path, str)):
            src = Path(src)
            text = f"--- {src.name}\n" + (src.read_text(errors="replace") if src.exists() else "(no log yet)")
        else:
            text = src()
        out.append(text[-tail:])
    return "\n".join(out)


def _timed_out(what: str, timeout: float, logs) -> AssertionError:
    text = logs_of(logs)
    return AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{text}" if text else ""))


def wait_for(cond: Callable[[], T], timeout: float = 30, what: str = "the condition",
             logs: LogSource | Iterable[LogSource] | None = None, *, every: float = 0.05) -> T:
    """Poll `cond()` until it returns something truthy and return that; AssertionError naming
    `what` (and the tail of each of `logs`: one source or several) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, logs)
        time.sleep(every)


async def wait_for_async(cond: Callable[[], T | Awaitable[T]], timeout: float = 30, what: str = "the condition",
                         logs: LogSource | Iterable[LogSource] | None = None, *, every: float = 0.05) -> T:
    """wait_for on an event loop: the loop runs between polls; `cond` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, logs)
        await asyncio.sleep(every)
