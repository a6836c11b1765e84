"""Developer commands: `rewardloop sessions list|show|export|query` (in the table of
service/cli/main.py; `replay` and `evaluate`, which load the model, are in service/cli/replay.py)."""
from __future__ import annotations

import argparse
import json
import sys
import time

from core.settings import CommonSettings
from service.cli.common import TIME_HELP, no_session, positive_int, require_redis, session_id_of, session_log, signed, time_arg


def _filters(p: argparse.ArgumentParser, limit: int) -> None:
    p.add_argument("--user", metavar="U", help="only sessions of user U")
    p.add_argument("--since", metavar="T", type=time_arg, help=f"only sessions created at or after T ({TIME_HELP})")
    p.add_argument("--adapter", metavar="V", help="only sessions with a reply served by version V (base, 3, v3)")
    p.add_argument("--min-reward", metavar="R", type=float,
                   help="only sessions whose mean final reward (over their rewarded replies) is at least R")
    p.add_argument("--limit", type=positive_int, default=limit, help=f"most sessions (newest first; default {limit})")


def register(sub, fmt) -> None:
    p = sub.add_parser("sessions", help="list, show and export logged sessions", formatter_class=fmt,
                       description="Inspect what was served: sessions, every turn with its adapter version, "
                       "feedback events and reward; export them as training data TRL reads.")
    ssub = p.add_subparsers(dest="sessions_command", metavar="ACTION", required=True)
    s = ssub.add_parser("list", help="a table of sessions, newest first", formatter_class=fmt,
                        description="List sessions (newest first) matching the filters.")
    _filters(s, 50)
    s.add_argument("--json", action="store_true", help="print JSON (one list) instead of a table")
    s = ssub.add_parser("show", help="every turn of one session", formatter_class=fmt,
                        description="Print every reply of SESSION in order: the user text, the reply, its adapter "
                        "version and seed, each feedback event with its time, the reward and its components.")
    s.add_argument("session_id", metavar="SESSION", help="session id (s_...) or a reply id (rep_...) in it")
    s.add_argument("--json", action="store_true", help="print the session as JSON")
    s.add_argument("--raw", action="store_true", help="with --json: include prompt ids, token ids and log-probs")
    s = ssub.add_parser("export", help="write sessions as jsonl, or SFT/KTO/DPO datasets", formatter_class=fmt,
                        description="Write matching sessions to FILE, one JSON object per line, loadable with "
                        "datasets.load_dataset('json', data_files=FILE). Formats: jsonl (the raw log, one session "
                        "per line), sft (messages), kto (prompt/completion/label), dpo (prompt/chosen/rejected), "
                        "feedback (one row per feedback event with its reason tags and comment, schema "
                        "rewardloop.feedback/1: see docs/developers.md). "
                        "Opted-out and forgotten users are always left out.")
    _filters(s, 100_000)
    s.add_argument("--format", choices=("jsonl", "sft", "kto", "dpo", "feedback"), default="jsonl",
                   help="jsonl = raw log; sft, kto, dpo = the columns TRL's trainers read; feedback = one row per "
                   "feedback event (default jsonl)")
    s.add_argument("-o", "--output", metavar="FILE", required=True, help="file to write ('-' for stdout)")
    s.add_argument("--reply-min-reward", metavar="R", type=float,
                   help="sft only: keep only replies whose final reward is at least R")
    s.add_argument("--meta", action="store_true",
                   help="sft/kto/dpo: add reply_id, session_id, adapter_version and reward columns")

    s = ssub.add_parser("query", help="SQL (DuckDB) over the archive and the hot window", formatter_class=fmt,
                        description="Run SQL over every logged record, archived or still in Redis: tables replies, "
                        "sessions, events, ledger, rewards, pairs, and the view feedback (one row per id, forgotten "
                        "users left out). Needs DuckDB: pip install 'rewardloop[query]'. --examples lists the "
                        "documented queries, --schema the columns.")
    s.add_argument("sql", metavar="SQL", nargs="?", help="the query, or the name of an example (--examples)")
    s.add_argument("--examples", action="store_true", help="print the example queries")
    s.add_argument("--schema", action="store_true", help="print every table's columns")
    s.add_argument("--json", action="store_true", help="print JSON rows instead of a table")


# --- helpers -------------------------------------------------------------------------------
def _clock(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(ts))) if ts else "-"


def _filter(args):
    from service.devtools.sessions import SessionFilter
    return SessionFilter(user=args.user, since=args.since, adapter=args.adapter, min_reward=args.min_reward,
                         limit=args.limit)


# --- sessions ------------------------------------------------------------------------------
def cmd_sessions(args, settings: CommonSettings) -> int:
    if not require_redis(settings, f"sessions {args.sessions_command}"):
        return 2
    log = session_log(settings)
    if args.sessions_command == "list":
        rows = log.list(_filter(args))
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print("no sessions match")
            return 0
        print(f"{'session':<24} {'user':<18} {'created (UTC)':<17} {'last active':<17} {'turns':>5} {'replies':>7} "
              f"{'adapters':<10} {'rewarded':>8} {'mean':>7}  note")
        for s in rows:
            print(f"{s['session_id']:<24} {s['user_id'][:18]:<18} {_clock(s['created']):<17} "
                  f"{_clock(s['last_active']):<17} {s['turns']:>5} {s['replies']:>7} "
                  f"{','.join(s['adapters'])[:10]:<10} {s['rewarded']:>8} {signed(s['mean_reward']):>7}  "
                  f"{s['excluded'] or ''}")
        return 0
    if args.sessions_command == "query":
        return _query(args, settings, log)
    if args.sessions_command == "show":
        sid = session_id_of(log, args.session_id)
        detail = log.detail(sid, raw=args.raw) if sid else None
        if detail is None:
            return no_session(args.session_id, "sessions show")
        if args.json:
            print(json.dumps(detail, indent=2))
        else:
            _print_session(detail)
        return 0
    return _export(log, args)


def _query(args, settings: CommonSettings, log) -> int:
    from service.devtools import query
    if args.examples or args.schema or not args.sql:
        print(query.schema_text() if args.schema else
              "\n\n".join(f"-- {name}\n{sql}" for name, sql in query.EXAMPLES.items()))
        return 0 if args.examples or args.schema else 2
    try:
        cols, rows = query.run(log.history, log.history.archive, query.EXAMPLES.get(args.sql, args.sql))
    except query.QueryError as exc:
        print(f"rewardloop sessions query: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([dict(zip(cols, r)) for r in rows], indent=2, default=str))
        return 0
    table = [cols] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [min(60, max(len(row[i]) for row in table)) for i in range(len(cols))]
    for row in table:
        print("  ".join(cell[:60].ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"({len(rows)} rows)", file=sys.stderr)
    return 0


def _print_session(s: dict) -> None:
    print(f"session {s['session_id']}   user {s['user_id']}   created {_clock(s['created'])}   "
          f"last active {_clock(s['last_active'])}   mean reward {signed(s['mean_reward'])}"
          + (f"   [{s['excluded']}]" if s["excluded"] else ""))
    for r in s["replies"]:
        kept = "" if r.get("in_history") else "   (not kept in the conversation)"
        params = r.get("params") or {}
        print(f"\n--- turn {r.get('turn')}   reply {r['reply_id']}   version {r.get('adapter_version')}   "
              f"seed {params.get('seed')}   T={params.get('temperature')} top_p={params.get('top_p')}{kept}")
        if r.get("replaces"):
            print(f"    replaces {r['replaces']}")
        print(f"user:  {r.get('user_text', '')}")
        print(f"model: {r.get('text', '')}")
        print(f"       {r.get('n_tokens')} tokens, {r.get('finish_reason')}, ended {_clock(r.get('ended_at'))}")
        for e in r.get("events", []):
            value = "" if e.get("value") is None else f" {e['value']}"
            role = " (this reply was the rejected one)" if e.get("role") == "rejected" else ""
            at = time.strftime("%H:%M:%S", time.gmtime(e["server_time"] or 0))
            why = (f"  tags: {', '.join(e['tags'])}" if e.get("tags") else "") + \
                (f"  comment: {json.dumps(e['comment'], ensure_ascii=False)}" if e.get("comment") else "") + \
                (f"  ({e['how']})" if e.get("how") else "")
            print(f"  feedback {at} {e['kind']}{value}{role}{why}")
        rw = r.get("reward")
        if rw:
            comps = ", ".join(f"{k} {v:+.3f}" for k, v in (rw.get("components") or {}).items())
            print(f"  reward {rw.get('state')} {signed(rw.get('reward'))}   [{comps}]   "
                  f"config {rw.get('config_hash', '-')}")
        else:
            print("  reward -   (no ledger entry yet: is a worker running?)")


def _export(log, args) -> int:
    from service.devtools import export
    summaries = [s for s in log.list(_filter(args)) if not s["excluded"]]
    details = (log.detail(s["session_id"], raw=True) for s in summaries)
    rows = export.rows((d for d in details if d is not None), args.format, args.reply_min_reward, args.meta)
    if args.output == "-":
        n = 0
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
            n += 1
    else:
        n = export.write_jsonl(args.output, rows)
    print(f"wrote {n} {args.format} rows from {len(summaries)} sessions to {args.output}", file=sys.stderr)
    return 0


HANDLERS = {"sessions": cmd_sessions}
