"""What every subcommand module shares: the message for a command run without a Redis URL."""
from __future__ import annotations

import sys

from core.settings import CommonSettings

NO_REDIS = "set REWARDLOOP_REDIS_URL to the deployment's Redis (`rewardloop up` prints it)"


def require_redis(settings: CommonSettings, command: str) -> bool:
    """True if a Redis URL is set; else print why `rewardloop COMMAND` cannot run and return False."""
    if not settings.redis_url:
        print(f"rewardloop {command}: {NO_REDIS}", file=sys.stderr)
        return False
    return True
