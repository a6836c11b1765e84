"""Shared bench helpers: a real server (embedded Redis + uvicorn subprocess), tables, JSON."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.embedded_redis import EmbeddedRedis  # noqa: E402
from tests.support.processes import ServerProc, base_env, free_port  # noqa: E402

RESULTS = REPO / "bench" / "results"


@contextmanager
def live_server(model: str, **env):
    """Embedded Redis + one `rewardloop serve` process; both stopped on exit."""
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "data") as redis:
        srv = ServerProc(base_env(redis.url, "bench:", Path(tmp), REWARDLOOP_MODEL=model, **env), free_port(),
                         Path(tmp) / "server.log", prefix="bench:")
        srv.start(timeout=600)
        try:
            yield srv, redis
        finally:
            srv.stop()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def mean(xs):
    return statistics.fmean(xs) if xs else float("nan")


def table(rows: list[dict], cols: list[str]) -> str:
    cells = [[str(c) for c in cols]] + [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "" if v is None else str(v)


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "platform": platform.platform()}, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
               **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
