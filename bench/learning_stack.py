"""The live stack the learning bench chats with, and the waits between its steps: embedded (or
given) Redis, one server, a Celery worker and beat, wired to the bench's reward config."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from core.keys import Keys
from tests.support.processes import REPO, ServerProc, base_env, free_port


def live_comparison_env(args) -> dict:
    """A deployment this small (a dozen users, ~40 replies a round) reaches the monitor's default
    50 rewarded replies per side only with a bigger canary share and a lower floor: --canary-share
    and --drift-min-samples set them, so the live comparison can promote a canary between rounds
    and the next run continues it."""
    env = {}
    if args.canary_share is not None:
        env["REWARDLOOP_CANARY_SHARE"] = args.canary_share
    if args.drift_min_samples is not None:
        env.update(REWARDLOOP_DRIFT_MIN_SAMPLES=args.drift_min_samples, REWARDLOOP_OPS_EVERY_S=2)
    return env


def start_stack(args, work: Path) -> tuple[dict, list, ServerProc, str, object]:
    """Redis, server, worker, beat. Returns (env, background procs, server, redis url, embedded)."""
    embedded = None
    url = args.redis_url
    if not url:
        from core.embedded_redis import EmbeddedRedis
        embedded = EmbeddedRedis(work / "redis")
        url = embedded.start()
    reward_toml = work / "reward.toml"
    # a few simulated users: let one user fill up to half a batch (the default cap is 0.25)
    # reading_wpm: simulated users read 10x faster than people, so a full read takes ~1 s
    reward_toml.write_text(f"wait_window_s = {args.reward_wait}\ncontinuation_window_s = 60.0\n"
                           "max_user_share = 0.5\nreading_wpm = 2300.0\n"
                           + (f'no_signal_policy = "{args.no_signal_policy}"\n' if args.no_signal_policy else ""))
    env = base_env(url, "bench:", work / "data", REWARDLOOP_MODEL=args.model,
                   REWARDLOOP_MAX_NEW_TOKENS=args.max_new_tokens, REWARDLOOP_REWARD_CONFIG=reward_toml,
                   REWARDLOOP_UPDATE_EVERY=100000, REWARDLOOP_PUBLISH_MODE="stable",
                   REWARDLOOP_WORKER_EVENTS_EVERY_S=1, REWARDLOOP_WORKER_FINALIZE_EVERY_S=1,
                   **live_comparison_env(args))
    (work / "data").mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for cmd in (["worker", "--queues", "rewards,ops"], ["beat"]):
            log = open(work / f"{cmd[0]}.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "service.cli", *cmd], env=env, cwd=REPO,
                                          stdout=log, stderr=subprocess.STDOUT))
        server = ServerProc(env, free_port(), work / "server.log", prefix="bench:").start(timeout=300)
    except BaseException:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
        if embedded is not None:
            embedded.stop()
        raise
    return env, procs, server, url, embedded


def wait_for_rewards(r, keys: Keys, reply_ids: set[str], timeout: float) -> dict[str, dict]:
    """Final reward entries of these replies (waits for most of them, up to timeout)."""
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, e in r.xrange(keys.rewards):
            if e.get("reply_id") in reply_ids:
                found[e["reply_id"]] = e
        if len(found) >= 0.9 * len(reply_ids):
            break
        time.sleep(1.0)
    return found


def wait_for_swap(r, keys: Keys, version: str, timeout: float = 60.0) -> str:
    """Wait until the server reports loading (or refusing) `version`; returns the result or 'timeout'."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, e in r.xrevrange(keys.adapter_swaps, count=50):
            if e.get("version") == version and e.get("result") in ("loaded", "refused"):
                time.sleep(1.0)  # routing moves right after the load, in the same reconcile
                return e["result"]
        time.sleep(0.5)
    return "timeout"


def wait_for_canary_verdict(r, keys: Keys, registry, since: float, timeout: float = 20.0) -> dict | None:
    """With a canary under the ops monitor's live comparison, wait until beat has judged it on
    rewards that arrived by `since` (its verdict is newer), so the next learner run sees the
    promotion the deployment would have made. Returns the canary's verdict (None: no canary)."""
    deadline = time.monotonic() + timeout
    while True:
        canary = registry.state()["canary"]
        if not canary:
            return None
        raw = r.hget(keys.ops_verdicts, canary)
        verdict = json.loads(raw) if raw else None
        if (verdict and verdict.get("at", 0) >= since) or time.monotonic() > deadline:
            return {"version": canary, **(verdict or {"reason": "no verdict yet"})}
        time.sleep(0.5)
