"""Subcommands added by later parts (worker, learner, operators, developers)."""
from __future__ import annotations


def register(sub, fmt) -> None:
    return None
