"""What the subcommand modules share: the message for a command run without a Redis URL, and the
session log, time arguments and formatting of the developer commands."""
from __future__ import annotations

import argparse
import math
import sys

from core.redis_conn import connect
from core.settings import CommonSettings

NO_REDIS = "set REWARDLOOP_REDIS_URL to the deployment's Redis (`rewardloop up` prints it)"


def require_redis(settings: CommonSettings, command: str) -> bool:
    """True if a Redis URL is set; else print why `rewardloop COMMAND` cannot run and return False."""
    if not settings.redis_url:
        print(f"rewardloop {command}: {NO_REDIS}", file=sys.stderr)
        return False
    return True


# --- what the developer commands share (service/cli/dev.py, service/cli/replay.py) ---------
TIME_HELP = "epoch seconds, an age like 30m / 2h / 7d, or an ISO date/time like 2026-11-28T10:00 (UTC)"


def time_arg(text: str) -> float:
    from service.devtools.sessions import parse_time
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def session_log(settings: CommonSettings):
    from core.archive import Archive
    from core.keys import Keys
    from service.devtools.sessions import SessionLog
    return SessionLog(connect(settings.redis_url), Keys(settings.prefix), Archive(settings.archive_location))


def signed(x) -> str:
    """A reward as +0.123, or '-' where there is none."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}"


def session_id_of(log, ident: str) -> str | None:
    if ident.startswith("rep_"):
        return log.session_of_reply(ident)
    return ident


def no_session(ident: str, command: str) -> int:
    print(f"rewardloop {command}: no session {ident!r} (see `rewardloop sessions list`; a forgotten user's "
          "sessions are gone)", file=sys.stderr)
    return 1
