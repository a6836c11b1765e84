"""Process settings, split by the process that uses them, read from the environment once at an
entry point.

    CommonSettings         every process: Redis, the model, the data dir, the key prefix
    ServerSettings         `rewardloop serve`: HTTP/websocket, generation, the engine, admission
    WorkerSettings         reward workers and beat: tick intervals, retries, the drift monitor
    LearnerSettings        the learner (`rewardloop train`, the `learn` queue): when and how it publishes
    LearnerWorkerSettings  a Celery worker that consumes `learn` as well as the reward queues
    Settings               the whole deployment: `rewardloop up` and `doctor`, which start or check all

Every other module receives its process's object (frozen) instead of reading `os.environ`
itself, so tests and embedded uses can build one directly. A module reads only the fields of
its process's class (tests/test_architecture.py checks it), so a server never depends on a
worker's setting. Each field carries its help and its rules (core/config_fields.py); a class
adds only its cross-field rules (`_check`). One module per process class: common.py (with the
environment reading), server.py, worker.py, learner.py; `from core.settings import X` as before.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.settings.common import DEFAULT_MODEL, TINY_MODEL, CommonSettings, env_name, own_fields
from core.settings.learner import LearnerSettings, LearnerWorkerSettings
from core.settings.server import ServerSettings
from core.settings.worker import WorkerSettings

__all__ = ["DEFAULT_MODEL", "TINY_MODEL", "CommonSettings", "ServerSettings", "WorkerSettings", "LearnerSettings",
           "LearnerWorkerSettings", "Settings", "PROCESS_CLASSES", "env_name", "env_help", "own_fields"]


@dataclass(frozen=True)
class Settings(ServerSettings, LearnerWorkerSettings):
    """The whole deployment: what `rewardloop up` and `doctor` read (each child reads its own class)."""


PROCESS_CLASSES = (CommonSettings, ServerSettings, WorkerSettings, LearnerSettings)


def env_help(klass: type = None) -> str:
    """Text block listing the environment variables `klass` reads (default: all), grouped by the
    process class that owns them, for CLI --help."""
    klass = klass or Settings
    lines = ["environment:"]
    for owner in PROCESS_CLASSES:
        if issubclass(klass, owner):
            lines.append(f"  [{owner.__name__}] {' '.join(owner.__doc__.split()).split('. ')[0].rstrip('.')}.")
            lines.extend(f"    {f.metadata['help']}" for f in own_fields(owner))
    return "\n".join(lines)
