"""Developer commands that load the model: `rewardloop replay` and `rewardloop evaluate` (in the
table of service/cli/main.py; the session log's commands are in service/cli/dev.py)."""
from __future__ import annotations

import json
import sys

from core.redis_conn import connect
from core.settings import CommonSettings
from service.cli.common import TIME_HELP, no_session, positive_int, require_redis, session_id_of, session_log, signed, time_arg


def register(sub, fmt) -> None:
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
    p.add_argument("--since", metavar="T", type=time_arg, help=f"only rewards finalized at or after T ({TIME_HELP})")
    p.add_argument("--limit", type=positive_int, default=1000, help="most logged replies, newest (default 1000)")
    p.add_argument("--min-ess", type=float, default=30.0, help="warn below this effective sample size (default 30)")
    p.add_argument("--clip", type=float, help="cap each importance weight at this value (clipped IPS)")
    p.add_argument("--json", action="store_true", help="print JSON (with every reply's weight)")
    p.add_argument("--reward-model", action="store_true",
                   help="instead: the learned reward model's calibration on its held-out replies (AUROC, Brier "
                   "score and a reliability table per signal), from DATA_DIR/reward_model")


def _registry_state(settings: CommonSettings) -> dict:
    from core.keys import Keys
    from core.registry import Registry
    return Registry(connect(settings.redis_url), Keys(settings.prefix),
                    settings.data_dir).state()


def cmd_replay(args, settings: CommonSettings) -> int:
    if not require_redis(settings, "replay"):
        return 2
    log = session_log(settings)
    sid = session_id_of(log, args.session_id)
    session = log.detail(sid, raw=True) if sid else None
    if session is None:
        return no_session(args.session_id, "replay")
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
        print(f"\nreply {r['reply_id']} (turn {r['turn']}): logged {old['state']} {signed(old['reward'])} "
              f"[{old['config_hash']}] -> {new['state']} {signed(new['reward'])} [{new['config_hash']}]   "
              f"difference {signed(r['difference'])}")
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
        cells = " ".join(f"{signed(b['predicted'])}->{signed(b['observed'])}({b['n']})" for b in s["reliability"] if b["n"])
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
            res = evaluate_version(session_log(settings), model, version, since=args.since, limit=args.limit,
                                   min_ess=args.min_ess, clip=args.clip)
    except VersionUnavailable as exc:
        print(f"rewardloop evaluate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"version {version}: {res['n']} logged replies (served by {res['served_by']}); skipped {res['skipped']}")
    if res["n"]:
        print(f"logged mean reward  {signed(res['logged_mean'])}")
        print(f"IPS                 {signed(res['ips'])}   95% CI [{signed(res['ips_ci'][0])}, {signed(res['ips_ci'][1])}]")
        print(f"SNIPS               {signed(res['snips'])}   95% CI [{signed(res['snips_ci'][0])}, {signed(res['snips_ci'][1])}]")
        print(f"effective sample size {res['ess']:.1f} of {res['n']}   weights min {res['weights']['min']:.3g} "
              f"mean {res['weights']['mean']:.3g} max {res['weights']['max']:.3g}")
    if res.get("warning"):
        print(f"WARNING: {res['warning']}")
    return 0


HANDLERS = {"replay": cmd_replay, "evaluate": cmd_evaluate}
