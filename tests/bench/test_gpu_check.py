"""bench/gpu_check.py, the check prepared for a GPU box, run here on the CPU in its --quick form:
every section runs and passes on the tiny model, and nothing it drives imports what the GPU box
lacks (Redis, Celery, the web stack); if something does, the run fails loudly, naming the chain."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.support.processes import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"


def _guard():
    spec = importlib.util.spec_from_file_location("gpucheck_guard", REPO / "bench" / "gpucheck" / "guard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_quick_cpu_run_passes_every_check_and_measures_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "ALL CHECKS PASSED" in proc.stdout
    run = json.loads(out.read_text())
    assert run["ok"] and not run["errors"] and run["env"]["device"] == "cpu"
    names = {c["name"] for c in run["checks"] if c["ok"]}
    assert {"batched streams = each alone", "prefix cache = no cache (greedy)", "mixed adapters in one batch",
            "cancel ends a stream and frees it", "seeded sampling on the device's generators",
            "hot swap: no stream dropped", "hot swap: every token from its own, fully loaded version",
            "hot swap: the check sees a torn adapter", "learner run (tiny)"} <= names
    assert [r["sessions"] for r in run["serving"]] == [1, 4]
    assert all(r["engine_tok_s"] > 0 and r["static_tok_s"] > 0 and r["vs_batch1"] > 0 for r in run["serving"])
    swap = run["hotswap"]
    assert swap["swaps"] == 3 and swap["dropped"] == [] and swap["swaps_under_load"] >= 1
    assert swap["half_loaded_error_min"] > swap["tolerance"] > swap["logprob_error_own_version"]["max"]
    learner = run["learner"][0]
    assert learner["samples"] == 8 and learner["s_per_sample"] > 0 and learner["kl_to_parent"] >= 0
    assert {a["aim"].split(":")[0] for a in run["aims"]} >= {"64 sessions"}


def test_a_forbidden_import_fails_the_run_loudly(tmp_path):
    """Redis imported before the check starts (as a module the engine imported would): exit 3, named."""
    out = tmp_path / "gpu_check.json"
    code = ("import runpy, sys, redis; sys.argv = [sys.argv[1], '--device', 'cpu', '--quick', '--sections', '', "
            "'--out', sys.argv[2]]; runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, str(SCRIPT), str(out)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads(out.read_text())
    assert run["forbidden_import"] and "redis" in run["errors"][0] and not run["ok"]


def test_the_guard_names_the_chain_that_imported_a_forbidden_module(tmp_path, monkeypatch):
    guard = _guard()
    (tmp_path / "gc_outer.py").write_text("import gc_forbidden\n")
    (tmp_path / "gc_forbidden.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    watch = guard.ImportWatch(names=("gc_forbidden",)).install()
    try:
        guard.check(watch, names=("gc_forbidden",))            # nothing imported yet
        import gc_outer  # noqa: F401
        with pytest.raises(guard.ForbiddenImport, match=r"gc_forbidden: .*gc_outer\.py:1"):
            guard.check(watch, names=("gc_forbidden",))
    finally:
        sys.meta_path.remove(watch)
        for name in ("gc_outer", "gc_forbidden"):
            sys.modules.pop(name, None)
