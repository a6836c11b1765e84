"""The layout rules that import contracts cannot express: no module over 500 lines, the house
limits of issue 27 (modules, functions, positional parameters), and the contracts themselves run
(a broken one fails `make test` through `make lint`, and here)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO

PACKAGES = ("core", "service", "worker", "learner")
MAX_LINES = 500


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(REPO)): n for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules by concept: {long}"


def test_the_import_contracts_hold():
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists() and not shutil.which("lint-imports"):
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    out = subprocess.run([str(exe) if exe.exists() else "lint-imports", "--no-cache"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:]


# Which process's settings class each part of the code receives (core/settings.py). The longest
# matching path prefix wins; a module may read only the fields of its class (and its bases).
PROCESS_OF = {"core": "CommonSettings", "service/devtools": "CommonSettings", "service/cli/dev.py": "CommonSettings",
              "service/cli/replay.py": "CommonSettings", "service/cli/common.py": "CommonSettings",
              "service": "ServerSettings", "service/cli": "Settings", "service/cli/worker.py": "WorkerSettings",
              "service/cli/ops.py": "WorkerSettings", "service/cli/learner.py": "LearnerSettings",
              "worker": "WorkerSettings", "learner": "LearnerSettings"}


def _settings_reads(path: Path) -> set[str]:
    """Attributes read on a name that holds settings (`settings.x`, `self.settings.x`, `rt.settings.x`)."""
    import ast
    reads = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            holder = node.value
            name = holder.id if isinstance(holder, ast.Name) else getattr(holder, "attr", "")
            if name in ("settings", "_settings"):
                reads.add(node.attr)
    return reads


def test_each_module_reads_only_its_processs_settings():
    import dataclasses

    import core.settings as st
    allowed = {}
    for name in set(PROCESS_OF.values()):
        klass = getattr(st, name)
        allowed[name] = {f.name for f in dataclasses.fields(klass)} | {
            a for c in klass.__mro__ for a, v in vars(c).items() if isinstance(v, property) or callable(v)}
    wrong = {}
    for pkg in PACKAGES:
        for p in (REPO / pkg).rglob("*.py"):
            rel = str(p.relative_to(REPO))
            owner = max((k for k in PROCESS_OF if rel == k or rel.startswith(k + "/")), key=len)
            outside = sorted(a for a in _settings_reads(p) - allowed[PROCESS_OF[owner]] if not a.startswith("__"))
            if outside:
                wrong[rel] = (PROCESS_OF[owner], outside)
    assert wrong == {}, f"these modules read settings their process does not have (move the field): {wrong}"


def test_the_process_settings_split_the_fields_between_them():
    import dataclasses

    from core.settings import PROCESS_CLASSES, Settings, own_fields
    owned = [f.name for c in PROCESS_CLASSES for f in own_fields(c)]
    assert sorted(owned) == sorted(f.name for f in dataclasses.fields(Settings))  # each field has one owner


# The house limits of issue 27, on every product package and on the helpers tests share (bench/ is
# exempt, and so are test modules, where a test may take many fixtures): modules of at most 400
# lines, functions of at most 60, positional parameter lists of at most 6 (self and cls not counted).
AT_HOUSE_LIMITS = ("core", "service", "worker", "learner", "deploy", "tests/support")
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_POSITIONAL = 400, 60, 6
# Over a limit for now (path: the work that brings it back); an entry goes when that work lands.
NOT_YET: dict[str, str] = {}


def _over_house_limits(path: Path) -> list[str]:
    import ast
    text = path.read_text()
    n_lines = len(text.splitlines())
    out = [f"{n_lines} lines"] if n_lines > MAX_MODULE_LINES else []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            names = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
            positional = len(names) - (names[:1] in (["self"], ["cls"]))
            if lines > MAX_FUNCTION_LINES:
                out.append(f"{node.name}: {lines} lines")
            if positional > MAX_POSITIONAL:
                out.append(f"{node.name}: {positional} positional parameters (make the rest keyword-only)")
    return out


def test_packages_at_the_house_limits_stay_there():
    over = {rel: found for pkg in AT_HOUSE_LIMITS for p in sorted((REPO / pkg).rglob("*.py"))
            if (rel := str(p.relative_to(REPO))) not in NOT_YET and (found := _over_house_limits(p))}
    assert over == {}, f"split these by concept, or make trailing parameters keyword-only: {over}"
    back = [rel for rel in NOT_YET if not (REPO / rel).exists() or not _over_house_limits(REPO / rel)]
    assert back == [], f"these meet the house limits now: take them out of NOT_YET: {back}"


def test_no_test_module_imports_another_test_module_or_a_conftest():
    """What tests share lives in tests/support/ (issue 27): a test module imported as a library
    runs its tests twice, and its helpers drift from the ones beside them."""
    import ast
    wrong = {}
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            bad = [n for n in names if n.startswith("tests.") and n.rsplit(".", 1)[-1].startswith(("test_", "conftest"))]
            if bad:
                wrong.setdefault(str(path.relative_to(REPO)), []).extend(bad)
    assert wrong == {}, f"import these from tests/support/ instead: {wrong}"


def test_redis_keys_are_named_only_in_core_keys():
    """A key spelled out by hand (f"{prefix}reply:{rid}") drifts from the one the code writes;
    tests and packages take every name from core.keys.Keys."""
    import ast
    wrong = []
    for pkg in (*PACKAGES, "tests"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            if path == REPO / "core" / "keys.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.JoinedStr) and len(node.values) > 1 and \
                        isinstance(node.values[0], ast.FormattedValue) and \
                        ast.unparse(node.values[0].value).endswith("prefix") and isinstance(node.values[1], ast.Constant) \
                        and str(node.values[1].value)[:1].isalpha():   # f"{prefix}_{token}" makes an id, not a key
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert wrong == [], f"name these keys through core.keys.Keys: {wrong}"
