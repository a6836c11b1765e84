"""Data that lasts: `rewardloop archive status|run` and `rewardloop users forget|opt-out`
(in the table of service/cli/main.py)."""
from __future__ import annotations

import json
import sys
import time

from core.redis_conn import connect
from core.settings import CommonSettings, WorkerSettings
from service.cli.common import require_redis


def register(sub, fmt) -> None:
    p = sub.add_parser("archive", help="the Parquet archive behind Redis: status, or one run now", formatter_class=fmt,
                       description="Redis holds the hot window; the beat task `archive` (every "
                       "REWARDLOOP_ARCHIVE_EVERY_S) moves finished sessions and processed stream entries to the "
                       "archive (REWARDLOOP_ARCHIVE_URL, default DATA_DIR/archive), deletes expired partitions and "
                       "applies forgets.")
    asub = p.add_subparsers(dest="archive_command", metavar="ACTION", required=True)
    a = asub.add_parser("status", help="the last run, the archive's size and Redis's memory")
    a.add_argument("--json", action="store_true", help="print JSON")
    a = asub.add_parser("run", help="run the archive task once, here and now")
    a.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("users", help="privacy: forget a user, or opt a user out of learning", formatter_class=fmt,
                       description="Remove a user's data, or stop using it for learning and export.")
    usub = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    u = usub.add_parser("forget", help="delete everything of USER and leave a tombstone",
                        description="Delete USER's sessions, replies, feedback events, ledger entries, reward and "
                        "pair stream entries, signals, idempotency records and flags from Redis, rewrite the archive "
                        "files that hold any of their rows, and mark the user forgotten so later training runs and "
                        "exports exclude anything they still send.")
    u.add_argument("user", metavar="USER", help="user id")
    u.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    u = usub.add_parser("opt-out", help="never use USER's data for learning or export",
                        description="Set the opt-out flag of USER (the same as POST /api/opt-out with their token).")
    u.add_argument("user", metavar="USER", help="user id")


def _clock(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts))) if ts else "-"


def cmd_archive(args, settings: WorkerSettings) -> int:
    if not require_redis(settings, f"archive {args.archive_command}"):
        return 2
    from core.keys import Keys
    r, keys = connect(settings.redis_url), Keys(settings.prefix)
    if args.archive_command == "run":
        from worker.archive.run import run_archive
        out = run_archive(r, keys, settings)
        print(json.dumps(out, indent=2) if args.json else f"archive run: {json.dumps(out)}")
        return 0 if out.get("ok") is not False else 1
    from core.archive import Archive
    from worker.ops.store import OpsStore
    st = OpsStore(r, keys).storage()
    usage = Archive(settings.archive_location).usage()
    if args.json:
        print(json.dumps({**st, "tables": usage}, indent=2))
        return 0
    a = st["archive"]
    limit = f"{st['redis_max']:,} ({100 * st['redis_ratio']:.0f}% used)" if st["redis_max"] else "none set"
    print(f"Redis memory   {st['redis_used']:,} bytes, maxmemory {limit}" + ("   ALERT" if st["memory_alert"] else ""))
    if not a["ran"]:
        print("archive        no run yet (is `rewardloop beat` running, with a worker on the ops queue?)")
    elif a["ok"]:
        print(f"archive        ok, last run {_clock(a['last_ok_at'])} UTC, at {a['location']}")
    else:
        print(f"archive        FAILING since {_clock(a['failing_since'])} UTC: {a['error']}")
    print(f"moved so far   {int(a['sessions_moved'] or 0)} sessions, {int(a['replies_moved'] or 0)} replies")
    for table, u in usage.items():
        print(f"  {table:<9} {u['files']:>6} files {u['bytes']:>14,} bytes {u['days']:>5} days")
    return 0


def cmd_users(args, settings: CommonSettings) -> int:
    if not require_redis(settings, f"users {args.users_command}"):
        return 2
    from core.keys import Keys
    from service.devtools.privacy import forget_user, opt_out
    r, keys = connect(settings.redis_url), Keys(settings.prefix)
    if args.users_command == "opt-out":
        opt_out(r, keys, args.user)
        print(f"user {args.user} opted out: served as before, never used for learning or export")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print("rewardloop users forget: this deletes data for good; add --yes to confirm", file=sys.stderr)
            return 2
        if input(f"delete every trace of user {args.user!r}? type the user id to confirm: ").strip() != args.user:
            print("not confirmed; nothing deleted", file=sys.stderr)
            return 1
    from worker.archive.run import apply_forgets
    report = forget_user(r, keys, args.user).as_dict()
    report["archive"] = apply_forgets(r, keys, settings.archive_location)
    print(json.dumps(report))
    return 0


HANDLERS = {"archive": cmd_archive, "users": cmd_users}
