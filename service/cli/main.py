"""`rewardloop` console script: one subcommand per job, `--help` on each."""
from __future__ import annotations

import argparse
import logging
import sys

from core.settings import CommonSettings, LearnerSettings, LearnerWorkerSettings, ServerSettings, Settings, WorkerSettings, env_help
from service.cli import commands, data, dev, learner, ops, replay, worker

# The subcommand table: each module registers its subparsers and maps names to handlers.
# `commands` holds up/serve/token/doctor; the others group one kind of user's commands.
PARTS = (worker, learner, dev, replay, data, ops)
HANDLERS = {**commands.COMMANDS, **{k: v for part in PARTS for k, v in part.HANDLERS.items()}}



# The settings class each subcommand's process reads (core/settings.py): a process sees only the
# fields it uses. `up` and `doctor` start or check every part, so they read them all.
SETTINGS = {"up": Settings, "doctor": Settings, "serve": ServerSettings, "token": ServerSettings,
            "worker": worker.settings_class, "beat": WorkerSettings, "rewards": WorkerSettings, "drift": WorkerSettings,
            "train": LearnerSettings, "adapters": LearnerSettings,
            "sessions": CommonSettings, "replay": CommonSettings, "evaluate": CommonSettings, "users": CommonSettings,
            "archive": WorkerSettings}


def settings_class(args) -> type:
    klass = SETTINGS[args.command]
    return klass if isinstance(klass, type) else klass(args)


def _settings(args) -> CommonSettings:
    try:
        return settings_class(args).from_env(host=getattr(args, "host", None), port=getattr(args, "port", None),
                                 model=getattr(args, "model", None))
    except ValueError as exc:
        sys.exit(f"rewardloop: bad setting: {exc}")


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="bind address (REWARDLOOP_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (REWARDLOOP_PORT, default 8000)")
    p.add_argument("--model", help="smollm2 | tiny-random | a model folder (REWARDLOOP_MODEL)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="rewardloop", formatter_class=fmt, epilog=env_help(),
                                     description="A chat service that learns from the people who use it.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("up", help="start everything (Redis, servers, workers, beat) and print the URLs",
                       description="Start an embedded Redis (unless REWARDLOOP_REDIS_URL is set), N servers on "
                       "consecutive ports, M reward workers, a learner worker and beat; print each URL; a process "
                       "that dies is restarted; Ctrl-C stops them all.",
                       formatter_class=fmt, epilog=env_help())
    _add_server_flags(p)
    p.add_argument("--no-worker", action="store_true", help="do not start the Celery workers and beat")
    commands.add_up_flags(p)

    p = sub.add_parser("serve", help="run the HTTP/websocket server", formatter_class=fmt,
                       epilog=env_help(ServerSettings),
                       description="Serve the chat page, /ws/chat, the OpenAI-compatible API and /metrics.")
    _add_server_flags(p)

    p = sub.add_parser("token", help="user tokens", description="Create signed user tokens.")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    tc = tsub.add_parser("create", help="print a signed token for USER", description="Print a signed user token "
                         "(uses REWARDLOOP_SECRET, or the secret generated under the data dir).")
    tc.add_argument("user", metavar="USER", help="user id to put in the token")
    tc.add_argument("--ttl", type=int, help="lifetime in seconds (default REWARDLOOP_TOKEN_TTL_S)")
    tc.add_argument("--opt-out", action="store_true", help="this user's data is never used for training")

    p = sub.add_parser("doctor", help="check Python, torch, the model and Redis",
                       description="Print what this machine has: Python, torch and its device, the model path "
                       "and whether it loads, the Redis URL and whether it answers.")
    p.add_argument("--model", help="model to check (REWARDLOOP_MODEL)")
    p.add_argument("--no-load", action="store_true", help="do not load the model, only locate it")

    for part in PARTS:
        part.register(sub, fmt)
    for name, klass in SETTINGS.items():  # each command's --help lists the variables its process reads
        p = sub.choices[name]
        if p.epilog is None:
            p.epilog, p.formatter_class = env_help(klass if isinstance(klass, type) else LearnerWorkerSettings), fmt
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    return HANDLERS[args.command](args, _settings(args)) or 0


if __name__ == "__main__":
    sys.exit(main())
