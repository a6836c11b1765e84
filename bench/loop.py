"""The closed loop, as shipped: does a deployment running the default settings learn from its
users while they keep chatting?

Starts what `rewardloop up` starts (bench/loop_stack.py: server, reward worker, learner worker,
beat) on an embedded Redis, the default model. Simulated users of one population -- or a mix
(--mix concise:0.75,rude:0.25) -- chat through the websocket, each asking again `--think-s`
(jittered) after a reply ended, until `--replies` replies were served. Nothing drives the
learner: beat starts a run whenever REWARDLOOP_MIN_SAMPLES new final rewards exist, the live
comparison decides canaries, the server hot-swaps. A round is one finished learner run.

The bench changes only documented deployment settings (`SMALL_DEPLOYMENT`, --env), never a
learner constant. After the loop: each round's newest served version (canary, else stable) and
base answer the held-out questions (never asked in training; same questions, order and sampling
seed for every version, so replies pair up), judged by the majority population's hidden taste:
the held-out lift per round with a paired 95% CI, round 3 minus round 1 likewise. Chat
throughput and TTFT while a learner run is on vs idle: from the server's /metrics (tokens per
busy second) and the users' own clocks (TTFT p95, tokens/s per stream). TRL's KTOTrainer on the
rewarded replies the runs consumed is the reference (pip install -e '.[bench]').

    flock /tmp/rl-heavy.lock .venv/bin/python bench/loop.py --population concise --seed 0
    .venv/bin/python bench/loop.py --quick              # tiny model, a minute: the CI check
    .venv/bin/python bench/loop.py --mix concise:0.75,rude:0.25 --env REWARDLOOP_...=...
    .venv/bin/python bench/loop_report.py               # the table and chart over all runs
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from bench.loop_eval import chat_figures, evaluate, kto_reference, kto_samples, safety_figures, scrape_chat
from bench.loop_stack import LearnerWatch, Stack
from bench.populations import assign, parse_mix
from bench.simusers import Pacer, PopUser
from core.keys import Keys
from tests.support.processes import REPO

# What a small deployment changes from the defaults, each a documented environment setting:
SMALL_DEPLOYMENT = {
    "REWARDLOOP_MIN_SAMPLES": "40",     # a learner run per ~40 final rewards (default 64): 3 runs in 150 replies
    "REWARDLOOP_UPDATE_EVERY": "30",    # beat looks for enough new rewards every 30 s (default 300)
}
QUICK = {"REWARDLOOP_MIN_SAMPLES": "12", "REWARDLOOP_UPDATE_EVERY": "2", "REWARDLOOP_MAX_NEW_TOKENS": "12",
         "REWARDLOOP_OPS_EVERY_S": "2", "REWARDLOOP_DRIFT_MIN_SAMPLES": "4"}


def reward_toml(path: Path, wait_s: float, veto: bool = True) -> Path:
    """REWARDLOOP_REWARD_CONFIG of the bench's deployment: the default reward, except how long a
    reply's reward waits for signals (the simulated users react within seconds) and their reading
    speed (10x a person's, so a dwell is seconds, not minutes). veto=False: the control arm of
    the safety comparison (`safety_veto = false`: an unsafe reply's reward is no longer capped)."""
    path.write_text(f"wait_window_s = {wait_s}\nreading_wpm = 2300.0\n" + ("" if veto else "safety_veto = false\n"))
    return path


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--population", default=None, help="one population (bench/populations.py LOOP_POPULATIONS)")
    p.add_argument("--mix", default=None, help="a mixed population, e.g. concise:0.75,rude:0.25 (the first judges)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--replies", type=int, default=150, help="replies served in all (the users then stop)")
    p.add_argument("--think-s", type=float, default=20.0, help="a user's pause between a reply and its next question")
    p.add_argument("--max-minutes", type=float, default=30.0, help="the loop stops after this, whatever was served")
    p.add_argument("--reward-wait", type=float, default=30.0, help="wait_window_s of the bench's reward config")
    p.add_argument("--eval", type=int, default=48, help="held-out replies per version")
    p.add_argument("--env", action="append", default=[], metavar="REWARDLOOP_X=V",
                   help="a deployment setting (documented environment variable); repeatable")
    p.add_argument("--no-veto", action="store_true",
                   help="the control arm of the safety comparison: the reward config's safety_veto = false")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--no-kto", action="store_true", help="skip the TRL KTOTrainer reference")
    p.add_argument("--quick", action="store_true",
                   help="tiny model, 3 users, 24 replies, seconds-long windows: checks the loop end to end")
    p.add_argument("--tag", default="", help="suffix of the result file name")
    p.add_argument("--out", default=None, help="JSON (default bench/results/loop_<population>_seed<k><tag>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.users, args.replies, args.think_s = "tiny-random", 3, 24, 0.2
        args.reward_wait, args.eval, args.no_kto, args.max_minutes = 2.0, 8, True, 5.0
    args.mix = args.mix or args.population or "concise"
    return args


def deployment(args) -> dict[str, str]:
    settings = dict(QUICK if args.quick else SMALL_DEPLOYMENT)
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("REWARDLOOP_"):
            raise SystemExit(f"--env {item!r}: expected REWARDLOOP_NAME=VALUE (a documented setting)")
        settings[name] = value
    return settings


def run_loop(args, stack: Stack, users: list[PopUser]) -> tuple[dict, LearnerWatch, float]:
    """Users chat until the reply budget or the time limit; then wait for the learner to finish
    what it started (and a last run on what is left). Returns (loop figures, watch, wall s)."""
    import redis
    keys = Keys("loop:")
    r = redis.Redis.from_url(stack.url, decode_responses=True)
    pacer = Pacer(args.replies, args.think_s, seed=args.seed)
    watch = LearnerWatch(r, keys, stack.work / "data", stack.learner_pid,
                         replies=lambda: sum(len(u.turns) for u in users)).start()
    errors: list[BaseException] = []

    def chat(u: PopUser):
        try:
            u.live(stack.server, pacer)
        except Exception as exc:   # reported below: one broken user must not hang the loop
            errors.append(exc)
            pacer.stop()
    t0 = time.time()
    threads = [threading.Thread(target=chat, args=(u,), daemon=True) for u in users]
    for i, t in enumerate(threads):
        t.start()
        time.sleep(min(1.0, args.think_s / max(1, len(users))))   # users arrive one by one
    deadline = t0 + args.max_minutes * 60
    while any(t.is_alive() for t in threads) and time.time() < deadline:
        stack.check_alive()
        time.sleep(1.0)
    pacer.stop()
    for t in threads:
        t.join(600)
    chat_end = time.time()
    # the rewards of the last replies become final, beat may start a last run: let it finish
    settle = args.reward_wait + 2 * float(stack.settings.get("REWARDLOOP_UPDATE_EVERY", 300)) + 10
    while not errors and (time.time() < min(deadline + 600, chat_end + settle) or r.exists(keys.learn_lock)):
        stack.check_alive()
        if time.time() > deadline + 1800:
            break
        time.sleep(1.0)
    watch.stop()
    history = [f for _, f in r.xrange(keys.adapter_history)]
    verdicts = {v: json.loads(s) for v, s in r.hgetall(keys.ops_verdicts).items()}
    r.close()
    if errors:
        raise RuntimeError(f"{len(errors)} simulated user(s) failed, first: {errors[0]!r}")
    return {"history": history, "verdicts": verdicts, "chat_s": chat_end - t0}, watch, time.time() - t0


def rounds_of(watch: LearnerWatch, t0: float) -> list[dict]:
    """One round per learner run that committed (published or rejected), with what served after it."""
    out, last_end = [], t0
    for run in watch.runs:
        if run["state"] not in ("published", "rejected"):
            continue
        out.append({"round": len(out) + 1, **run, "wall_s": run["finished_at"] - last_end,
                    "run_s": (run["lock_interval"][1] or run["finished_at"]) - run["lock_interval"][0]
                    if run.get("lock_interval") else None})
        last_end = run["finished_at"]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    mix = parse_mix(args.mix)
    name = "_".join(f"{t.name}{round(s * 100)}" if len(mix) > 1 else t.name for t, s in mix)
    out = Path(args.out or REPO / "bench" / "results" / f"loop_{'quick_' if args.quick else ''}{name}_seed{args.seed}"
                                                         f"{'_noveto' if args.no_veto else ''}{args.tag}.json")
    work = Path(tempfile.mkdtemp(prefix="rl-loop-"))
    settings = deployment(args)
    settings.setdefault("REWARDLOOP_REWARD_CONFIG", str(reward_toml(work / "reward.toml", args.reward_wait,
                                                                          veto=not args.no_veto)))
    tastes = assign(mix, args.users)
    users = [PopUser(f"u{args.seed}_{i}_{t.name}", t, seed=args.seed * 1000 + i, max_turns=3)
             for i, t in enumerate(tastes)]
    print(f"loop bench: {args.mix}, seed {args.seed}, {args.users} users, {args.replies} replies, model {args.model}, "
          f"settings {settings} (work dir {work})", flush=True)
    stack = Stack(work, args.model, settings).start()
    try:
        t0 = time.time()
        loop, watch, wall = run_loop(args, stack, users)
        metrics = scrape_chat(stack.server.url)
        safety = safety_figures(stack.url, "loop:")
        samples = [] if args.no_kto else kto_samples(stack.url, "loop:", settings["REWARDLOOP_REWARD_CONFIG"])
    finally:
        stack.stop()
    turns = [t for u in users for t in u.turns]
    rounds = rounds_of(watch, t0)
    report = {"args": vars(args), "settings": settings, "mix": [[t.name, s] for t, s in mix],
              "work_dir": str(work), "replies": len(turns), "wall_s": wall, "chat_s": loop["chat_s"],
              "rounds": rounds, "runs": watch.runs, "learner_intervals": watch.intervals,
              "learner_rss_peak_gb": watch.rss_peak / 2 ** 30, "learner_rss_largest_gb": watch.rss_largest / 2 ** 30,
              "versions": versions_summary(loop["history"], loop["verdicts"]),
              "chat": chat_figures(turns, watch, metrics),
              "served_verdicts": served_verdicts(turns), "safety": safety,
              "learner_s_per_sample": learner_cost(work / "data", rounds)}
    kto = {"skipped": "--no-kto"} if args.no_kto else kto_reference(args, samples, work)
    report["trl_kto"] = {k: v for k, v in kto.items() if k != "lora"}
    extra = {"kto": Path(kto["adapter_dir"])} if "adapter_dir" in kto else {}
    max_new = int(settings.get("REWARDLOOP_MAX_NEW_TOKENS", 256))
    report.update(evaluate(args, work / "data", rounds, [t for t, _ in mix], max_new, extra))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    from bench.loop_report import print_run
    print_run(report)
    print(f"wrote {out}", flush=True)
    return 0


def learner_cost(data_dir: Path, rounds: list[dict]) -> dict:
    """Learner seconds per sample, from each committed run's manifest: the whole run (model load,
    reward model, training, gate) over the samples it trained on, and the training loop alone."""
    import json as _json

    from core.versions import folder_name
    runs = []
    for rd in rounds:
        if not rd.get("version"):
            continue
        m = _json.loads((data_dir / "adapters" / folder_name(rd["version"]) / "manifest.json").read_text())
        n = m.get("samples_used") or 0
        loop_s = (m.get("training") or {}).get("loop_seconds")
        runs.append({"version": rd["version"], "samples": n, "run_s": m.get("train_seconds"), "loop_s": loop_s,
                     "run_s_per_sample": m["train_seconds"] / n if n and m.get("train_seconds") else None,
                     "loop_s_per_sample": loop_s / n if n and loop_s else None, "parent": m.get("parent"),
                     "state": m.get("state"), "reason": m.get("reason"), "probe": probe_figures(m.get("probe"))})
    total_n = sum(r["samples"] for r in runs)
    total_s = sum(r["run_s"] or 0 for r in runs)
    return {"runs": runs, "run_s_per_sample": total_s / total_n if total_n else None}


def probe_figures(probe) -> dict | None:
    """The gate's safety probe of one run (learner/probe_run.py), without its per-probe details."""
    if not isinstance(probe, dict):
        return None
    return {k: probe.get(k) for k in ("decision", "reason", "unsafe_parent", "unsafe_new", "worse", "better", "p_value",
                                      "mean_p_unsafe_parent", "mean_p_unsafe_new", "relevance_parent",
                                      "relevance_new", "n", "parent", "by_kind")}


def versions_summary(history: list[dict], verdicts: dict) -> dict:
    count = lambda ev, by=None: sum(1 for h in history if h.get("event") == ev and (by is None or h.get("by") == by))
    return {"published": count("publish"), "rejected": count("reject"), "promoted": count("promote"),
            "rolled_back": count("rollback"), "promoted_by_monitor": count("promote", "drift-monitor"),
            "rolled_back_by_monitor": count("rollback", "drift-monitor"),
            "verdicts": {v: {k: d.get(k) for k in ("decision", "reason", "action", "child_n", "parent_n", "diff", "llr")}
                         for v, d in verdicts.items()}}


def served_verdicts(turns) -> dict:
    """The simulated users' own verdicts (+1/0/-1) on what each version served them, per taste."""
    out: dict = {}
    for t in turns:
        cell = out.setdefault(t.adapter_version, {}).setdefault(t.taste, [])
        cell.append(t.verdict.thumbs or 0)
    return {v: {taste: {"n": len(xs), "mean": sum(xs) / len(xs)} for taste, xs in by.items()} for v, by in out.items()}


if __name__ == "__main__":
    sys.exit(main())
