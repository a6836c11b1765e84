"""Developer commands: `rewardloop sessions list|show|export|query`, `rewardloop replay` and
`rewardloop evaluate` (in the table of service/cli/main.py)."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

from core.redis_conn import connect
from core.settings import CommonSettings
from service.cli.common import require_redis

TIME_HELP = "epoch seconds, an age like 30m / 2h / 7d, or an ISO date/time like 2026-11-28T10:00 (UTC)"


def _time(text: str) -> float:
    from service.devtools.sessions import parse_time
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _filters(p: argparse.ArgumentParser, limit: int) -> None:
    p.add_argument("--user", metavar="U", help="only sessions of user U")
    p.add_argument("--since", metavar="T", type=_time, help=f"only sessions created at or after T ({TIME_HELP})")
    p.add_argument("--adapter", metavar="V", help="only sessions with a reply served by version V (base, 3, v3)")
    p.add_argument("--min-reward", metavar="R", type=float,
                   help="only sessions whose mean final reward (over their rewarded replies) is at least R")
    p.add_argument("--limit", type=_positive, default=limit, help=f"most sessions (newest first; default {limit})")


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

    p = sub.add_parser("replay", help="re-generate a logged session on an adapter version", formatter_class=fmt,
                       description="Re-generate every reply of SESSION from its logged prompt (the context exactly "
                       "as served) on version V, with each reply's own seed and sampling params: with the version "
                       "that served it the replay is identical token for token. Shows served and replayed text side "
                       "by side, with the served reply's log-prob under V and its logged behavior log-prob. Loads "
                       "the model (REWARDLOOP_MODEL) and adapters from REWARDLOOP_DATA_DIR/adapters locally.")
    p.add_argument("session_id", metavar="SESSION", help="session id (s_...) or a reply id (rep_...) in it")
    p.add_argument("--adapter", metavar="V",
                   help="version to replay on: base, stable, canary or a number (default stable)")
    p.add_argument("--seed", type=int, help="sample with this seed instead of each reply's logged one")
    p.add_argument("--greedy", action="store_true", help="decode greedily (temperature 0) instead")
    p.add_argument("--html", metavar="FILE", help="also write a side-by-side HTML page to FILE")
    p.add_argument("--reward-config", metavar="TOML",
                   help="re-score the session's logged feedback under this reward config and show the difference "
                   "per reply (no model needed: skips the replay unless --adapter is given too)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("evaluate", help="counterfactual estimate of a version's reward on logged replies",
                       formatter_class=fmt,
                       description="Estimate version V's mean reward from logged replies and their final rewards, "
                       "by importance weighting (log-prob under V minus the behavior log-prob): IPS and SNIPS with "
                       "bootstrap 95%% intervals and the effective sample size, as the learner's gate computes them.")
    p.add_argument("--adapter", metavar="V", default="stable",
                   help="version to evaluate: base, stable, canary or a number (default stable)")
    p.add_argument("--since", metavar="T", type=_time, help=f"only rewards finalized at or after T ({TIME_HELP})")
    p.add_argument("--limit", type=_positive, default=1000, help="most logged replies, newest (default 1000)")
    p.add_argument("--min-ess", type=float, default=30.0, help="warn below this effective sample size (default 30)")
    p.add_argument("--clip", type=float, help="cap each importance weight at this value (clipped IPS)")
    p.add_argument("--json", action="store_true", help="print JSON (with every reply's weight)")
    p.add_argument("--reward-model", action="store_true",
                   help="instead: the learned reward model's calibration on its held-out replies (AUROC, Brier "
                   "score and a reliability table per signal), from DATA_DIR/reward_model")


# --- helpers -------------------------------------------------------------------------------
def _log(settings: CommonSettings):
    from core.archive import Archive
    from core.keys import Keys
    from service.devtools.sessions import SessionLog
    return SessionLog(connect(settings.redis_url), Keys(settings.prefix), Archive(settings.archive_location))


def _clock(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(ts))) if ts else "-"


def _r(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}"


def _session_id(log, ident: str) -> str | None:
    if ident.startswith("rep_"):
        return log.session_of_reply(ident)
    return ident


def _filter(args):
    from service.devtools.sessions import SessionFilter
    return SessionFilter(user=args.user, since=args.since, adapter=args.adapter, min_reward=args.min_reward,
                         limit=args.limit)


def _missing(ident: str, command: str) -> int:
    print(f"rewardloop {command}: no session {ident!r} (see `rewardloop sessions list`; a forgotten user's "
          "sessions are gone)", file=sys.stderr)
    return 1


# --- sessions ------------------------------------------------------------------------------
def cmd_sessions(args, settings: CommonSettings) -> int:
    if not require_redis(settings, f"sessions {args.sessions_command}"):
        return 2
    log = _log(settings)
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
                  f"{','.join(s['adapters'])[:10]:<10} {s['rewarded']:>8} {_r(s['mean_reward']):>7}  "
                  f"{s['excluded'] or ''}")
        return 0
    if args.sessions_command == "query":
        return _query(args, settings, log)
    if args.sessions_command == "show":
        sid = _session_id(log, args.session_id)
        detail = log.detail(sid, raw=args.raw) if sid else None
        if detail is None:
            return _missing(args.session_id, "sessions show")
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
          f"last active {_clock(s['last_active'])}   mean reward {_r(s['mean_reward'])}"
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
            print(f"  reward {rw.get('state')} {_r(rw.get('reward'))}   [{comps}]   "
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


# --- replay and evaluate -----------------------------------------------------------------
def _registry_state(settings: CommonSettings) -> dict:
    from core.keys import Keys
    from core.registry import Registry
    return Registry(connect(settings.redis_url), Keys(settings.prefix),
                    settings.data_dir).state()


def cmd_replay(args, settings: CommonSettings) -> int:
    if not require_redis(settings, "replay"):
        return 2
    log = _log(settings)
    sid = _session_id(log, args.session_id)
    session = log.detail(sid, raw=True) if sid else None
    if session is None:
        return _missing(args.session_id, "replay")
    out: dict = {"session_id": session["session_id"]}
    if args.reward_config:
        from service.devtools.replay import rescore_session
        from worker.rewards.config import RewardConfigError, load_reward_config
        try:
            cfg = load_reward_config(args.reward_config)
        except (RewardConfigError, OSError) as exc:
            print(f"rewardloop replay: --reward-config: {exc}", file=sys.stderr)
            return 2
        out["rescored"] = rescore_session(session, cfg)
    if not args.reward_config or args.adapter is not None or args.html:
        code = _replay(args, settings, session, out)
        if code:
            return code
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_replay(out)
    return 0


def _replay(args, settings: CommonSettings, session: dict, out: dict) -> int:
    from service.devtools.offline_model import OfflineModel, VersionUnavailable, resolve_version
    from service.devtools.replay import replay_session
    try:
        version = resolve_version(args.adapter or "stable", _registry_state(settings))
        with OfflineModel.load(settings) as model:
            out["version"] = version
            out["replay"] = replay_session(session, model, version, seed=args.seed, greedy=args.greedy)
    except VersionUnavailable as exc:
        print(f"rewardloop replay: {exc}", file=sys.stderr)
        return 2
    if args.html:
        from service.devtools.session_html import replay_page
        with open(args.html, "w", encoding="utf-8") as fh:
            fh.write(replay_page(session, version, out["replay"]))
    return 0


def _print_replay(out: dict) -> None:
    for r in out.get("replay", []):
        mark = "identical" if r["identical"] else "differs"
        if not r["identical"] and r.get("same_setup") and r.get("same_path") is False:
            mark += " (it was decoded in a batch with other streams: float noise there can flip a near-tie)"
        print(f"\n--- turn {r['turn']}   reply {r['reply_id']}   {mark}")
        print(f"user:    {r['user_text']}")
        served = r["served"]
        print(f"served:  {served['text']}   [v {served['adapter_version']}, seed {served['params']['seed']}]")
        print(f"replay:  {r['replay']['text']}   [v {out['version']}, seed {r['replay']['params']['seed']}]")
        lw = "-" if r["log_weight"] is None else f"{r['log_weight']:+.3f}"
        print(f"log p(served | v {out['version']}) {r['served_logp_under_replay']:.3f}   behavior "
              f"{r['served']['behavior_logp']:.3f}   log weight {lw}")
    if out.get("replay"):
        same = sum(r["identical"] for r in out["replay"])
        print(f"\n{same} of {len(out['replay'])} replies identical to what was served")
    for r in out.get("rescored", []):
        old, new = r["logged"], r["rescored"]
        print(f"\nreply {r['reply_id']} (turn {r['turn']}): logged {old['state']} {_r(old['reward'])} "
              f"[{old['config_hash']}] -> {new['state']} {_r(new['reward'])} [{new['config_hash']}]   "
              f"difference {_r(r['difference'])}")
        for line in new["explain"]:
            print(f"    {line}")


def cmd_reward_model(args, settings: CommonSettings) -> int:
    from learner.reward_model import RewardModel
    rm = RewardModel.load(settings.data_dir)
    if rm is None:
        print(f"rewardloop evaluate: no reward model under {settings.data_dir}/reward_model yet; the learner "
              "trains one each run (TrainConfig.reward_model) once it has 16 user-signalled final rewards",
              file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rm.metrics, indent=2))
        return 0
    m = rm.metrics
    print(f"reward model on {rm.base_model}: trained on {m['n_train']} replies, calibrated on {m['n_holdout']} "
          "held-out ones")
    print(f"{'signal':<14}{'base rate':>10}{'AUROC':>8}{'Brier':>8}   reliability (predicted -> observed, n)")
    for sig, s in m.items():
        if not isinstance(s, dict):
            continue
        cells = " ".join(f"{_r(b['predicted'])}->{_r(b['observed'])}({b['n']})" for b in s["reliability"] if b["n"])
        auc = "-" if s["auroc"] is None else f"{s['auroc']:.3f}"
        brier = "-" if s["brier"] is None else f"{s['brier']:.3f}"
        print(f"{sig:<14}{s['base_rate']:>10.2f}{auc:>8}{brier:>8}   {cells}")
    return 0


def cmd_evaluate(args, settings: CommonSettings) -> int:
    if args.reward_model:
        return cmd_reward_model(args, settings)
    if not require_redis(settings, "evaluate"):
        return 2
    from service.devtools.evaluate import evaluate_version
    from service.devtools.offline_model import OfflineModel, VersionUnavailable, resolve_version
    try:
        version = resolve_version(args.adapter, _registry_state(settings))
        with OfflineModel.load(settings) as model:
            res = evaluate_version(_log(settings), model, version, since=args.since, limit=args.limit,
                                   min_ess=args.min_ess, clip=args.clip)
    except VersionUnavailable as exc:
        print(f"rewardloop evaluate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"version {version}: {res['n']} logged replies (served by {res['served_by']}); skipped {res['skipped']}")
    if res["n"]:
        print(f"logged mean reward  {_r(res['logged_mean'])}")
        print(f"IPS                 {_r(res['ips'])}   95% CI [{_r(res['ips_ci'][0])}, {_r(res['ips_ci'][1])}]")
        print(f"SNIPS               {_r(res['snips'])}   95% CI [{_r(res['snips_ci'][0])}, {_r(res['snips_ci'][1])}]")
        print(f"effective sample size {res['ess']:.1f} of {res['n']}   weights min {res['weights']['min']:.3g} "
              f"mean {res['weights']['mean']:.3g} max {res['weights']['max']:.3g}")
    if res.get("warning"):
        print(f"WARNING: {res['warning']}")
    return 0


HANDLERS = {"sessions": cmd_sessions, "replay": cmd_replay, "evaluate": cmd_evaluate}
