"""`rewardloop worker`, `rewardloop beat` and `rewardloop rewards show|dead-letters|consumers|score`
(in the table of service/cli/main.py; `score` lives in service/cli/score.py)."""
from __future__ import annotations

import json
import logging
import secrets
import sys
import time

from core.redis_conn import connect
from core.settings import LearnerWorkerSettings, WorkerSettings
from service.cli import score
from service.cli.common import require_redis
from worker import queues


def register(sub, fmt) -> None:
    p = sub.add_parser("worker", help="run a Celery worker (rewards, learner runs, housekeeping)", formatter_class=fmt,
                       description="Run a Celery worker on the Redis at REWARDLOOP_REDIS_URL: it turns feedback "
                       "events into the reward ledger, finalizes rewards and runs learner jobs. Start as many as "
                       "you like; they share the work.")
    p.add_argument("--queues", default=",".join(queues.ALL), type=_queues,
                   help=f"comma-separated queues to consume (default {','.join(queues.ALL)})")
    p.add_argument("--concurrency", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--loglevel", default="INFO", help="Celery log level (default INFO)")

    sub.add_parser("beat", help="run the Celery beat scheduler (safe to run more than one)", formatter_class=fmt,
                   description="Send the periodic tasks (process events, finalize due rewards, find abandoned "
                   "sessions, reclaim stale events, learner trigger). Several beats may run: only the one holding "
                   "the Redis leader lock sends; another takes over when it stops.")

    p = sub.add_parser("rewards", help="inspect the reward ledger, score replies offline", formatter_class=fmt,
                       description="Explain rewards, list events that could not be processed, and score any text "
                       "with the reward (`rewards score`, no Redis needed).")
    rsub = p.add_subparsers(dest="rewards_command", metavar="ACTION", required=True)
    s = rsub.add_parser("show", help="explain one reply's reward line by line",
                        description="Print the ledger entry of REPLY_ID: state, signals, each component and why "
                        "it fired, the total, user weight and late signals.")
    s.add_argument("reply_id", metavar="REPLY_ID")
    s.add_argument("--json", action="store_true", help="print the raw ledger entry as JSON")
    d = rsub.add_parser("dead-letters", help="list events that failed too often (newest first)",
                        description="Events moved aside after REWARDLOOP_WORKER_MAX_DELIVERIES failed deliveries, "
                        "with the error; they no longer block anything.")
    d.add_argument("--limit", type=int, default=50, help="most rows to show (default 50)")
    c = rsub.add_parser("consumers", help="list the event consumers (one per reward-worker process)",
                        description="Every consumer of the events stream: name (host-pid), events it holds unacked, "
                        "seconds since it last read. --check: exit 1 unless a consumer of this host read within "
                        "--max-idle seconds (a container health check for reward workers).")
    c.add_argument("--check", action="store_true", help="health check for this host's consumer")
    c.add_argument("--max-idle", type=float, default=30.0, help="seconds (default 30; a consumer reads at least "
                   "once a second)")
    score.register(rsub, fmt)


def _queues(text: str) -> str:
    import argparse
    try:
        return ",".join(queues.parse_queues(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def settings_class(args) -> type:
    """A worker that consumes `learn` runs learner tasks beside reward tasks: it reads both's settings."""
    return LearnerWorkerSettings if queues.LEARN in args.queues.split(",") else WorkerSettings


def cmd_worker(args, settings: WorkerSettings) -> int:
    if not require_redis(settings, "worker"):
        return 2
    if args.concurrency < 1:
        print(f"rewardloop worker: --concurrency must be >= 1, got {args.concurrency}", file=sys.stderr)
        return 2
    from worker.celery_app import configure
    names = args.queues.split(",")
    app = configure(settings, learner_tasks=queues.LEARN in names, consume_events=queues.REWARDS in names)
    if args.loglevel.upper() == "INFO":  # one line per task twice a second drowns everything else
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)
    app.worker_main(["worker", "-Q", args.queues, "-c", str(args.concurrency), "--loglevel", args.loglevel,
                     "-n", f"rewardloop-{secrets.token_hex(3)}@%h", "--without-gossip", "--without-mingle"])
    return 0


def cmd_beat(args, settings: WorkerSettings) -> int:
    if not require_redis(settings, "beat"):
        return 2
    from worker.celery_app import configure
    from worker.leader import LeaderScheduler
    app = configure(settings, learner_tasks=False)
    logging.getLogger("celery.beat").setLevel(logging.WARNING)  # "Sending due task" every second
    app.Beat(scheduler=LeaderScheduler, loglevel="INFO", max_interval=1.0).run()
    return 0


def _clock(ts: str | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts))) if ts else "-"


def _signal_line(s: dict) -> str:
    value = "" if s.get("value") is None else f" {s['value']}"
    extra = "".join(f" {k}={v}" for k, v in (s.get("extra") or {}).items())
    return f"  {_clock(str(s['ts']))}  {s['kind']}{value}{extra}  ({s.get('event_id', '')})"


def cmd_rewards(args, settings: WorkerSettings) -> int:
    if args.rewards_command == "score":   # offline: no Redis
        return score.cmd_score(args, settings)
    if not require_redis(settings, f"rewards {args.rewards_command}"):
        return 2
    from core.keys import Keys
    from worker.rewards.ledger import RewardLedger
    ledger = RewardLedger(connect(settings.redis_url), Keys(settings.prefix))
    if args.rewards_command == "dead-letters":
        return _dead_letters(ledger, args.limit)
    if args.rewards_command == "consumers":
        return _consumers(ledger, args.check, args.max_idle)
    return _show(ledger, settings, args.reply_id, args.json)


def _dead_letters(ledger, limit: int) -> int:
    rows = ledger.dead_letters(limit)
    if not rows:
        print("no dead letters")
        return 0
    print(f"{'dead at (UTC)':<20} {'event':<17} {'kind':<12} {'reply':<26} {'tries':>5}  error")
    for _, f in rows:
        print(f"{_clock(f.get('dead_at')):<20} {f.get('stream_id', ''):<17} {f.get('kind', '')[:12]:<12} "
              f"{f.get('reply_id', '')[:26]:<26} {f.get('deliveries', ''):>5}  {f.get('error', '')[:100]}")
    return 0


def _consumers(ledger, check: bool, max_idle_s: float) -> int:
    import socket
    rows = ledger.consumers()
    if check:
        mine = [c for c in rows if c["name"].rsplit("-", 1)[0] == socket.gethostname()]
        fresh = [c for c in mine if c["idle"] / 1000 <= max_idle_s]
        print(f"{len(fresh)} of {len(mine)} consumer(s) of this host read within {max_idle_s:g} s")
        return 0 if fresh else 1
    if not rows:
        print("no consumers (no reward worker has read the events stream yet)")
    for c in rows:
        print(f"{c['name']:<40} pending {c['pending']:>6}   idle {c['idle'] / 1000:8.1f} s")
    return 0


def _show(ledger, settings: WorkerSettings, reply_id: str, as_json: bool) -> int:
    entry, signals = ledger.entry(reply_id), None
    if not entry:  # moved to the archive? (core.history reads Redis, then the archive)
        from core.history import History
        archived = History.from_settings(ledger.r, settings).ledger([reply_id]).get(reply_id)
        if archived is not None:
            entry, signals = archived.to_redis(), archived.signal_list()
    if not entry:
        known = "the reply exists but no worker has seen it yet" if ledger.reply(reply_id) else "no such reply"
        print(f"rewardloop rewards show: {reply_id!r} is not in the ledger ({known})", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(entry, indent=2, sort_keys=True))
        return 0
    signals = ledger.signals(reply_id) if signals is None else signals
    state = entry.get("state", "?")
    reward = entry.get("reward") or "-"
    print(f"reply    {reply_id}   state {state}   reward {reward}")
    print(f"user     {entry.get('user_id')}   session {entry.get('session_id')}   adapter {entry.get('adapter_version')}"
          f"   opt-out {entry.get('opt_out', '0')}")
    print(f"ended    {_clock(entry.get('ended_at'))}   due {_clock(entry.get('due_at'))}   "
          f"final {_clock(entry.get('finalized_at'))}   reward config {entry.get('config_hash', '-')}")
    if entry.get("replaces"):
        print(f"replaces {entry['replaces']}")
    for why in ("anomaly_reason", "unsafe_voter_reason"):
        if entry.get(why):
            print(f"weight   {entry.get('user_weight')}: {entry[why]}")
    if entry.get("unsafe"):
        print(f"unsafe   level {float(entry['unsafe']):.3f}" + (f"   {entry['veto']}" if entry.get("veto") else ""))
    print(f"signals ({len(signals)}):")
    for s in signals:
        print(_signal_line(s))
    if state == "pending":
        lines = _provisional(ledger, settings, reply_id, signals)
        print("provisional (not final yet):")
    else:
        lines = json.loads(entry.get("explain") or "[]")
        print("components:")
    for line in lines:
        print("  " + line)
    late = int(entry.get("late_signals") or 0)
    if late:
        print(f"late     {late} signal(s) arrived after finalization: recorded, reward unchanged")
    return 0


def _provisional(ledger, settings: WorkerSettings, reply_id: str, signals: list[dict]) -> list[str]:
    from worker.rewards.config import load_reward_config
    from worker.rewards.function import compute_reward
    from worker.rewards.signals import reply_facts
    cfg = load_reward_config(settings.reward_config)
    return compute_reward(reply_facts(ledger.reply(reply_id)), signals, cfg).explain()


HANDLERS = {"worker": cmd_worker, "beat": cmd_beat, "rewards": cmd_rewards}
