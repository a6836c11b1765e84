"""`rewardloop drift`: the drift monitor's view in a terminal (in the table of service/cli/main.py)."""
from __future__ import annotations

import json
import sys
import time

from core.redis_conn import connect
from core.settings import WorkerSettings
from service.cli.common import require_redis
from worker.ops import series


def register(sub, fmt) -> None:
    p = sub.add_parser("drift", help="reward per adapter version, drift detectors and alarms", formatter_class=fmt,
                       description="Print, per adapter version, its parent, role, rewarded samples, mean reward "
                       "with a 95% CI, the last drift verdict and a sparkline of the mean reward per minute; then "
                       "the sequential detectors and the latest alarms. Data: the series the worker's ops monitor "
                       "folds every REWARDLOOP_OPS_EVERY_S.")
    p.add_argument("--minutes", type=int, default=60, help="sparkline span in minutes (default 60)")
    p.add_argument("--alarms", type=int, default=10, help="latest alarms to list (default 10)")
    p.add_argument("--json", action="store_true", help="print the same data as JSON")


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


def render(state: dict, minutes: int) -> str:
    """The text report from worker.ops.state.build_state's dict (pure: easy to test)."""
    s = state["series"]
    lines = [f"stable {state['pointers']['stable']}   canary {state['pointers']['canary'] or '-'}"
             f"   pending {state['depths']['pending']}   dead letters {state['depths']['dead_letters']}", "",
             f"{'version':<8} {'parent':<7} {'role':<16} {'samples':>7} {'mean':>7} {'95% CI':>17}  "
             f"{'verdict':<24} reward/min, last {minutes} min (-1..1)"]
    for a in state["adapters"]:
        ci = "-" if a["ci95"][0] is None else f"{a['ci95'][0]:+.2f}..{a['ci95'][1]:+.2f}"
        verdict = (a["verdict"] or {}).get("action") or (a["verdict"] or {}).get("reason") or ""
        spark = series.sparkline(s["versions"].get(a["version"], {}).get("mean", []))
        lines.append(f"{a['version']:<8} {a['parent'] or '-':<7} {a['role'] or a['state']:<16} {a['samples']:>7} "
                     f"{_f(a['mean_reward']):>7} {ci:>17}  {verdict[:24]:<24} {spark}")
    if state["detectors"]:
        lines += ["", f"{'metric':<12} {'detector':<13} {'statistic':>9} {'threshold':>9}  state"]
        for d in state["detectors"]:
            lines.append(f"{d['metric']:<12} {d['detector']:<13} {d['statistic']:>9.2f} {d['threshold']:>9.1f}  "
                         f"{'armed' if d['armed'] else 'warming up'} ({d['events']} events)")
    lines += ["", "alarms:" if state["alarms"] else "no alarms in the window"]
    for a in state["alarms"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(a["at"])))
        lines.append(f"  {when}  {a['detector']} {a['metric']} v{a.get('version') or '*'}  "
                     f"{a.get('action', '')}: {a.get('message', '')}")
    return "\n".join(lines)


def cmd_drift(args, settings: WorkerSettings) -> int:
    if not require_redis(settings, "drift"):
        return 2
    if args.minutes < 1:
        print(f"rewardloop drift: --minutes must be >= 1, got {args.minutes}", file=sys.stderr)
        return 2
    import redis

    from core.keys import Keys
    from worker.ops.state import build_state
    from worker.ops.store import OpsStore
    client = connect(settings.redis_url)
    try:
        state = build_state(OpsStore(client, Keys(settings.prefix)), args.minutes, time.time())
    except redis.RedisError as exc:
        print(f"rewardloop drift: cannot read Redis at {settings.redis_url}: {exc}", file=sys.stderr)
        return 1
    state["alarms"] = state["alarms"][:args.alarms]
    print(json.dumps(state, indent=2, default=str) if args.json else render(state, args.minutes))
    return 0


HANDLERS = {"drift": cmd_drift}
