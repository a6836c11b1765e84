"""Subcommands added by the other parts. Each part keeps its commands in its own
module (`worker/cli.py`, `learner/cli.py`, ...) exposing:
  register(sub, fmt)      add argparse subparsers
  HANDLERS: dict          command name -> handler(args, settings) -> int
  UP_COMMANDS: list       (optional) argv lists that `rewardloop up` runs beside the server
"""
from __future__ import annotations

import importlib

PARTS = ("worker.cli", "learner.cli", "service.dev_cli", "worker.ops_cli")
HANDLERS: dict = {}
UP_EXTRA: list[list[str]] = []


def _parts():
    for name in PARTS:
        try:
            yield importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the part exists but something it imports is missing: say so
                raise


def register(sub, fmt) -> None:
    for part in _parts():
        part.register(sub, fmt)
        HANDLERS.update(part.HANDLERS)
        UP_EXTRA.extend(getattr(part, "UP_COMMANDS", []))
