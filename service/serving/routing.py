"""Which adapter version serves a session. Pure: no I/O.

A session is assigned by a hash of its id, so a conversation stays on one version
while the canary share is unchanged, and the split is the same on every server."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from core.versions import is_base


def session_bucket(session_id: str) -> float:
    """A stable number in [0, 1) for a session id."""
    return int(hashlib.sha256(session_id.encode()).hexdigest()[:8], 16) / 2 ** 32


@dataclass(frozen=True)
class Routing:
    stable: str = "base"
    canary: str = ""
    canary_share: float = 0.0

    def version_for(self, session_id: str) -> str:
        if self.canary and session_bucket(session_id) < self.canary_share:
            return self.canary
        return self.stable


def desired_versions(stable: str, canary: str, rollback_target: str, max_resident: int) -> list[str]:
    """Versions a server should keep loaded, most important first (base needs no slot)."""
    out: list[str] = []
    for v in (stable, canary, rollback_target):
        if not is_base(v) and v not in out:
            out.append(v)
    return out[:max_resident]
