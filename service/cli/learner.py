"""Learner subcommands: `rewardloop train --once` and `rewardloop adapters ...`."""
from __future__ import annotations

import dataclasses
import getpass
import json
import sys
import time

from core import versions
from core.redis_conn import connect
from core.settings import LearnerSettings

TRAIN_HELP = """\
Run the learner once: take the final rewards not used yet, train a LoRA adapter (continuing
the stable one), check it with the gate and publish it (canary or stable, per
REWARDLOOP_PUBLISH_MODE) or keep it as rejected with the reason. Learner settings come from
REWARDLOOP_TRAIN_CONFIG (TOML) and --set; see learner/config.py for every field.
Scheduled runs need no command: beat triggers them on the `learn` queue."""

ADAPTERS_HELP = """\
List and inspect adapter versions and move the serving pointers. promote/rollback only change
the pointers in Redis (with a history entry and a notice); servers swap on the notice."""


def register(sub, fmt) -> None:
    p = sub.add_parser("train", help="run the learner once (train, gate, publish)", description=TRAIN_HELP,
                       formatter_class=fmt)
    p.add_argument("--once", action="store_true", required=True,
                   help="one run now (required; periodic runs come from beat)")
    p.add_argument("--dry-run", action="store_true",
                   help="train and gate but publish nothing and leave the cursor where it is")
    p.add_argument("--config", metavar="TOML", help="learner settings file (default REWARDLOOP_TRAIN_CONFIG)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override one learner setting, e.g. --set step.kl_target=0.2 --set kto.beta=0.2 (repeatable; groups as TOML tables)")
    p.add_argument("--model", help="smollm2 | tiny-random | a model folder (REWARDLOOP_MODEL)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("adapters", help="list, show, promote and roll back adapter versions",
                       description=ADAPTERS_HELP, formatter_class=fmt)
    asub = p.add_subparsers(dest="adapters_command", metavar="ACTION", required=True)
    a = asub.add_parser("list", help="every version with its state and the serving pointers",
                        description="Print every version (state, parent, samples, created) and stable/canary.")
    a.add_argument("--json", action="store_true", help="print JSON")
    a = asub.add_parser("show", help="the manifest of version V", description="Print the manifest of version V "
                        "(JSON): training stats, the gate's figures, and its safety probe (`probe`: unsafe rates "
                        "parent/new, p-value, relevance, decision, reason).")
    a.add_argument("version", metavar="V", help="version number")
    a = asub.add_parser("promote", help="make version V stable", description="Make published version V the "
                        "stable version (the old stable becomes the rollback target; a canary V is cleared).")
    a.add_argument("version", metavar="V", help="version number (or 'base')")
    a.add_argument("--reason", default="", help="why (recorded in the history)")
    a = asub.add_parser("rollback", help="go back (drop the canary, or stable := rollback target, or V)",
                        description="Without V: drop the canary if one is set, else make the rollback target "
                        "(the previous stable, or base) stable. With V: make V stable and drop the canary.")
    a.add_argument("version", metavar="V", nargs="?", help="version number or 'base'")
    a.add_argument("--reason", default="", help="why (recorded in the history)")
    a = asub.add_parser("import", help="a PEFT LoRA folder trained elsewhere becomes the next version",
                        description="Bring a PEFT LoRA folder (adapter_config.json, adapter_model.safetensors; "
                        "trained with TRL, PEFT or another run) into the registry as the next version, with a "
                        "manifest, after the checks every server runs before serving (base model, LoRA only, rank, "
                        "target modules, finite weights). Without --publish it is only registered (promote it later).")
    a.add_argument("folder", metavar="FOLDER", help="the PEFT adapter folder")
    a.add_argument("--publish", choices=("stable", "canary"), help="serve it at once, as stable or as canary")
    a.add_argument("--canary-share", type=float, default=None, metavar="X",
                   help="share of sessions on the canary, 0..1 (default REWARDLOOP_CANARY_SHARE)")
    a.add_argument("--any-base", action="store_true",
                   help="accept an adapter whose config names another base model (same weights, other name)")


def _with_redis(settings, fn):
    from service.cli.commands import redis_for
    with redis_for(settings) as url:
        return fn(dataclasses.replace(settings, redis_url=url))


def cmd_train(args, settings: LearnerSettings) -> int:
    from learner.config import load_train_config
    from learner.runner import run_once
    if args.model:
        settings = dataclasses.replace(settings, model=args.model)
    try:
        cfg = load_train_config(args.config or settings.train_config, args.overrides)
    except (ValueError, TypeError, OSError) as exc:
        print(f"rewardloop train: bad learner setting: {exc}", file=sys.stderr)
        return 2
    result = _with_redis(settings, lambda s: run_once(s, cfg, dry_run=args.dry_run,
                                                       progress=not args.no_progress, by=_who()))
    if args.json:
        print(json.dumps(dataclasses.asdict(result), default=str))
    else:
        line = f"{result.state}"
        if result.version is not None:
            line += f" version {result.version}"
        print(line + (f": {result.reason}" if result.reason else ""))
        gate = result.stats.get("gate") if isinstance(result.stats, dict) else None
        if gate:
            print("gate:", json.dumps(gate["stats"]), *gate["notes"], sep="\n  ")
    return 0 if result.state in ("published", "rejected", "skipped", "dry_run") else 1


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def cmd_adapters(args, settings: LearnerSettings) -> int:
    return _with_redis(settings, lambda s: _adapters(args, s))


def _adapters(args, settings) -> int:

    from core.keys import Keys
    from core.registry import Registry, RegistryError
    r = connect(settings.redis_url)
    reg = Registry(r, Keys(settings.prefix), settings.data_dir)
    try:
        if args.adapters_command == "list":
            st = reg.state()
            if args.json:
                print(json.dumps(st, indent=2))
                return 0
            print(f"stable {st['stable']}   canary {st['canary'] or '-'} ({st['canary_share']:.0%})   "
                  f"rollback target {st['rollback_target'] or '-'}")
            print(f"{'version':>7}  {'state':<9}  {'parent':<6}  {'samples':>7}  {'created':<19}  {'probe':<7}  reason")
            for v in sorted(st["versions"], key=versions.sort_key):
                e = st["versions"][v]
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["created"]))
                probe = (e.get("probe") or {}).get("decision") or "-"   # the gate's safety probe
                print(f"{v:>7}  {e['state']:<9}  {e['parent']:<6}  {e['samples']:>7}  {created}  {probe:<7}  "
                      f"{e.get('reason', '')}")
            return 0
        if args.adapters_command == "import":
            return _import(args, settings, r)
        if args.adapters_command == "show":
            print(reg.manifest(args.version).to_json())
            return 0
        notice = reg.move(args.adapters_command, args.version, by=_who(), reason=args.reason)
        print(f"{notice['event']}: stable {notice['stable']}, canary {notice['canary'] or '-'}")
        return 0
    except RegistryError as exc:
        print(f"rewardloop adapters: {exc}", file=sys.stderr)
        return 1
    finally:
        r.close()


def _import(args, settings, r) -> int:
    from core.keys import Keys
    from learner.import_adapter import ImportRefused, import_adapter, module_names_of
    share = settings.canary_share if args.canary_share is None else args.canary_share
    if not 0 <= share <= 1:
        print(f"rewardloop adapters import: --canary-share must be in 0..1, got {share}", file=sys.stderr)
        return 2
    model_id, path, modules = module_names_of(settings.model, settings.models_dir)
    try:
        version, _ = import_adapter(r, Keys(settings.prefix), settings.data_dir, args.folder, model_id=model_id,
                                    model_path=path, module_names=modules, publish=args.publish, canary_share=share,
                                    by=_who(), any_base=args.any_base)
    except ImportRefused as exc:
        print(f"rewardloop adapters import: {exc}", file=sys.stderr)
        return 1
    print(f"imported {args.folder} as version {version}"
          + (f", published as {args.publish}" if args.publish else f" (not serving: `rewardloop adapters promote {version}`)"))
    return 0


HANDLERS = {"train": cmd_train, "adapters": cmd_adapters}
