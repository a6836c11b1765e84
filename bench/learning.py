"""Does the loop learn? Simulated users with a hidden taste chat with the live system for a few
rounds; after each round the learner trains and publishes a new adapter.

Live parts started here: Redis (embedded unless REWARDLOOP_REDIS_URL is set), one server, a
Celery worker (queues rewards,ops) and beat, so feedback travels the real path
websocket -> events -> reward ledger -> final rewards. The learner runs in this process
(runner.run_once, publish mode stable) once per round instead of waiting for beat.

Reported per adapter version, with 95% confidence intervals:
  online   the simulated users' verdicts (+1 / 0 / -1) on replies the server actually served
           with that version (needs the servers' hot swap; otherwise everything is 'base'), and
           the mean final reward the ledger gave them;
  offline  fresh replies to the bench questions generated here with base + that adapter, judged
           by the same hidden taste (independent of hot swap).
TRL's KTOTrainer on the same logged data is compared when `trl` is installed; otherwise the
JSON says why it was skipped. JSON goes to --out; a PNG chart to --png (matplotlib when
installed, else a small built-in bar-chart writer).

    .venv/bin/python bench/learning.py                       # smollm2: 6.5 min on a busy 2-core box
    .venv/bin/python bench/learning.py --model tiny-random --rounds 2 --users 4
"""
from __future__ import annotations

import argparse
import json
import math
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from bench.simusers import QUESTIONS, Preference, SimUser, judge, run_users, thumbs_reward  # noqa: E402
from learner.config import TrainConfig  # noqa: E402
from learner.registry import Registry  # noqa: E402
from learner.runner import run_once  # noqa: E402
from service.keys import Keys  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.helpers import MODELS, REPO, ServerProc, base_env, free_port  # noqa: E402


def mean_ci(values: list[float]) -> dict:
    """Mean with a normal-approximation 95% interval."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "ci": [None, None]}
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return {"n": n, "mean": m, "ci": [m - half, m + half]}


def start_stack(args, work: Path) -> tuple[dict, list, ServerProc, str, object]:
    """Redis, server, worker, beat. Returns (env, background procs, server, redis url, embedded)."""
    embedded = None
    url = args.redis_url
    if not url:
        from service.embedded_redis import EmbeddedRedis
        embedded = EmbeddedRedis(work / "redis")
        url = embedded.start()
    reward_toml = work / "reward.toml"
    # a few simulated users: let one user fill up to half a batch (the default cap is 0.25)
    reward_toml.write_text(f"wait_window_s = {args.reward_wait}\ncontinuation_window_s = 60.0\n"
                           "max_user_share = 0.5\n")
    env = base_env(url, "bench:", work / "data", REWARDLOOP_MODEL=args.model,
                   REWARDLOOP_MAX_NEW_TOKENS=args.max_new_tokens, REWARDLOOP_REWARD_CONFIG=reward_toml,
                   REWARDLOOP_UPDATE_EVERY=100000, REWARDLOOP_PUBLISH_MODE="stable",
                   REWARDLOOP_WORKER_EVENTS_EVERY_S=1, REWARDLOOP_WORKER_FINALIZE_EVERY_S=1)
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


def offline_eval(model_name: str, adapter_dir: Path | None, n: int, max_new_tokens: int, seed: int) -> list[float]:
    """Judge fresh replies to the bench questions from base (+ adapter) with the hidden taste."""
    import torch

    from learner.modeling import load_model
    loaded = load_model(model_name, MODELS, device="cpu")
    model = loaded.model
    if adapter_dir is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    tok = loaded.tokenizer
    tok.padding_side = "left"
    system = Settings().system_prompt
    qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    prompts = [tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": q}],
                                       add_generation_prompt=True, tokenize=False) for q, _ in qs]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id)  # [n, P + T]
    scores = []
    for (q, a), row in zip(qs, out[:, batch["input_ids"].shape[1]:]):
        ids = row.tolist()
        stopped = tok.eos_token_id in ids
        text = tok.decode(ids[:ids.index(tok.eos_token_id)] if stopped else ids, skip_special_tokens=True)
        scores.append(thumbs_reward(judge(Preference(), q, a, text, "stop" if stopped else "length")))
    return scores


def trl_comparison() -> dict:
    try:
        import trl  # noqa: F401
    except ImportError:
        return {"skipped": "trl is not installed (pip install trl datasets) -- KTOTrainer comparison not run"}
    return {"skipped": "trl is installed but the KTOTrainer comparison is not implemented in this bench yet"}


def png_chart(path: Path, rows: list[tuple[str, dict]]) -> None:
    """Bar chart of mean reward per version (with CI whiskers), rewards in [-1, 1]."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _tiny_png(path, rows)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    means = [r["mean"] or 0 for _, r in rows]
    errs = [[(r["mean"] or 0) - (r["ci"][0] or 0) for _, r in rows], [(r["ci"][1] or 0) - (r["mean"] or 0) for _, r in rows]]
    ax.bar([name for name, _ in rows], means, yerr=errs, capsize=4, color="#4a7bd0")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylim(-1, 1)
    ax.set_ylabel("mean reward (offline, hidden taste)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _tiny_png(path: Path, rows: list[tuple[str, dict]], w: int = 480, h: int = 240) -> None:
    """Dependency-free PNG: one blue bar per version (left to right), black zero line, red CI whiskers."""
    px = [[(255, 255, 255)] * w for _ in range(h)]
    y_of = lambda v: int(round((1 - (max(-1.0, min(1.0, v)) + 1) / 2) * (h - 1)))  # noqa: E731
    slot = w // max(1, len(rows))
    for i, (_, r) in enumerate(rows):
        if r["mean"] is None:
            continue
        x0, x1 = i * slot + slot // 4, i * slot + 3 * slot // 4
        ya, yb = sorted((y_of(0), y_of(r["mean"])))
        for y in range(ya, yb + 1):
            for x in range(x0, x1):
                px[y][x] = (74, 123, 208)
        lo, hi = sorted((y_of(r["ci"][0]), y_of(r["ci"][1])))
        for y in range(lo, hi + 1):
            px[y][(x0 + x1) // 2] = (200, 30, 30)
    for x in range(w):
        px[y_of(0)][x] = (0, 0, 0)
    raw = b"".join(b"\x00" + bytes(c for p in row for c in p) for row in px)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="smollm2 (default) | tiny-random | a model folder")
    p.add_argument("--rounds", type=int, default=2, help="chat-then-train rounds")
    p.add_argument("--users", type=int, default=6, help="simulated users chatting at once")
    p.add_argument("--sessions", type=int, default=1, help="conversations per user per round")
    p.add_argument("--max-turns", type=int, default=2, help="turns a pleased user goes on for")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3, help="bigger than the learner default: few steps")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--eval", type=int, default=16, help="offline replies judged per version")
    p.add_argument("--reward-wait", type=float, default=3.0, help="reward wait window in seconds")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of an embedded one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "learning.json"))
    p.add_argument("--png", default=str(REPO / "bench" / "results" / "learning.png"))
    args = p.parse_args(argv)

    t_start = time.time()
    work = Path(tempfile.mkdtemp(prefix="rl-bench-learning-"))
    env, procs, server, url, embedded = start_stack(args, work)  # stopped in the finally below
    keys = Keys("bench:")
    r = redis.Redis.from_url(url, decode_responses=True)
    settings = Settings(redis_url=url, prefix="bench:", data_dir=work / "data", model_cache_dir=MODELS,
                        model=args.model, device="cpu", publish_mode="stable", min_samples=1,
                        reward_config=work / "reward.toml")
    cfg = TrainConfig(lr=args.lr, epochs=args.epochs, minibatch_size=8, min_samples=2, holdout_share=0.2,
                      kl_budget=0.5, cf_margin=0.5, cf_min_ess=5.0)
    pref = Preference()
    rounds = []
    served: dict[str, list[float]] = {}  # version -> the simulated users' verdicts on what it served
    try:
        users = [SimUser(f"sim{i}", pref, seed=args.seed * 1000 + i, max_turns=args.max_turns)
                 for i in range(args.users)]
        for k in range(args.rounds):
            t0 = time.time()
            for u in users:
                u.seed += 7919  # new questions every round
            turns = run_users(server, users, args.sessions)
            for t in turns:
                served.setdefault(t.adapter_version, []).append(thumbs_reward(t.verdict))
            t_chat = time.time() - t0
            judged = {t.reply_id for t in turns if t.verdict.thumbs is not None}  # others may get no reward at all
            finals = wait_for_rewards(r, keys, judged, timeout=60 + 2 * args.reward_wait)
            res = run_once(settings, cfg, progress=True, by="bench")
            rounds.append({"round": k, "turns": len(turns), "final_rewards": len(finals),
                           "served": sorted({t.adapter_version for t in turns}), "chat_s": t_chat,
                           "verdict": mean_ci([thumbs_reward(t.verdict) for t in turns]),
                           "learner": {"state": res.state, "version": res.version, "reason": res.reason,
                                       "seconds_per_step": (res.stats.get("training") or {}).get("seconds_per_step"),
                                       "train_s": res.stats.get("train_seconds"),
                                       "gate": (res.stats.get("gate") or {}).get("stats")}})
            print(f"round {k}: {len(turns)} turns ({t_chat:.0f}s), {len(finals)} final rewards, verdict mean "
                  f"{rounds[-1]['verdict']['mean']:+.2f}; learner {res.state} v{res.version} {res.reason}", flush=True)
        # online: everything served, grouped by the version that served it
        online: dict[str, dict] = {}
        ledger: dict[str, list[float]] = {}
        for _, e in r.xrange(keys.rewards):
            if e.get("state") in ("rewarded", "defaulted") and e.get("reward"):  # 'excluded' has no reward
                ledger.setdefault(e.get("adapter_version", "base"), []).append(float(e["reward"]))
        for v in sorted(set(ledger) | set(served)):
            online[v] = {"ledger_reward": mean_ci(ledger.get(v, [])), "user_verdict": mean_ci(served.get(v, []))}
        reg = Registry(r, keys, settings.data_dir)
        versions = ["base"] + [v for v in sorted(reg.state()["versions"], key=int)
                               if reg.state()["versions"][v]["state"] == "published"]
    finally:
        server.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(15)
        r.close()
        if embedded is not None:
            embedded.stop()
    offline = {}
    for v in versions:
        folder = None if v == "base" else reg.version_dir(v)
        offline[v] = mean_ci(offline_eval(args.model, folder, args.eval, args.max_new_tokens, args.seed))
        print(f"offline {v:>5}: mean {offline[v]['mean']:+.3f}  95% CI [{offline[v]['ci'][0]:+.3f}, "
              f"{offline[v]['ci'][1]:+.3f}]  n={offline[v]['n']}", flush=True)

    report = {"model": args.model, "args": vars(args), "preference": pref.__dict__, "rounds": rounds,
              "online": online, "offline": offline, "trl_kto": trl_comparison(),
              "hot_swap_seen": any(v != "base" for rd in rounds for v in rd["served"]),
              "seconds": time.time() - t_start}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    png_chart(Path(args.png), [(v, offline[v]) for v in versions])
    print(f"wrote {out} and {args.png} in {report['seconds']:.0f}s")
    if not report["hot_swap_seen"]:
        print("note: the server served only 'base' -- no hot swap observed; the offline table carries the result")
    return 0


if __name__ == "__main__":
    sys.exit(main())
