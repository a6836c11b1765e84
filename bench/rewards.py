"""Benchmark the reward workers: events per second through real `rewardloop worker` processes
(1 and 2 workers, same run), and feedback-to-final-reward latency with a zero wait window.

Throughput: N events (half `reply`, half `thumbs` on those replies) are written to a fresh
prefix; the clock runs from the write until the workers have acked them all (beat sends
`process_events` every --events-every seconds). Latency: one reply + thumbs every --gap
seconds; latency = the final reward's finalized_at minus the thumbs event's server time, with
the default beat periods unless overridden. Redis: REWARDLOOP_REDIS_URL, else an embedded one
(appendfsync always, as `rewardloop up` runs it).

    .venv/bin/python bench/rewards.py                 # prints a table, writes bench/results/rewards.json
    .venv/bin/python bench/rewards.py --events 8000 --workers 1,2,4
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout
from core.embedded_redis import EmbeddedRedis  # noqa: E402


def start(env: dict, log: Path, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "service.cli", *argv], env=env, cwd=REPO, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def write_replies(r: redis.Redis, prefix: str, ids: list[str], with_thumbs: bool) -> float:
    now = time.time()
    with r.pipeline(transaction=False) as p:
        for rid in ids:
            p.hset(f"{prefix}reply:{rid}", mapping={"reply_id": rid, "user_id": "bench", "session_id": "s_bench",
                                                     "adapter_version": "base", "text": "A short benchmark reply.",
                                                     "n_tokens": 5, "finish_reason": "stop", "ended_at": repr(now)})
            p.xadd(f"{prefix}events", {"kind": "reply", "reply_id": rid, "session_id": "s_bench", "user_id": "bench",
                                       "adapter_version": "base", "server_time": repr(now)})
            if with_thumbs:
                p.xadd(f"{prefix}events", {"event_id": "ev_" + rid, "kind": "thumbs", "value": "1", "reply_id": rid,
                                           "session_id": "s_bench", "user_id": "bench", "adapter_version": "base",
                                           "server_time": repr(time.time()), "since_reply_end_ms": "4000"})
        p.execute()
    return now


def acked(r: redis.Redis, prefix: str) -> int:
    return int(r.hget(f"{prefix}worker:stats", "events") or 0)


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise SystemExit(f"bench: timed out after {timeout}s waiting for {what}")


def throughput(r, base_env: dict, n_workers: int, n_events: int, logdir: Path, events_every: float) -> dict:
    prefix = f"bench{secrets.token_hex(3)}:"
    env = {**base_env, "REWARDLOOP_PREFIX": prefix, "REWARDLOOP_WORKER_EVENTS_EVERY_S": str(events_every)}
    procs = [start(env, logdir / f"worker{n_workers}.log", "worker", "--queues", "rewards,ops")
             for _ in range(n_workers)]
    procs.append(start(env, logdir / f"beat{n_workers}.log", "beat"))
    try:
        # warm up: every worker process has imported everything and holds a Redis connection
        write_replies(r, prefix, [f"warm{i}" for i in range(n_workers * 4)], with_thumbs=False)
        wait_until(lambda: acked(r, prefix) >= n_workers * 4, 180, "the workers to start")
        time.sleep(2 * events_every)
        base = acked(r, prefix)
        t0 = time.perf_counter()
        write_replies(r, prefix, [f"rep{i}" for i in range(n_events // 2)], with_thumbs=True)
        wait_until(lambda: acked(r, prefix) - base >= n_events // 2 * 2, 600, "the events to be processed")
        elapsed = time.perf_counter() - t0
        consumers = r.xinfo_consumers(f"{prefix}events", "rewarders")
        return {"workers": n_workers, "events": n_events // 2 * 2, "seconds": round(elapsed, 3),
                "events_per_s": round(n_events // 2 * 2 / elapsed, 1), "consumers": len(consumers)}
    finally:
        stop(procs)


def latency(r, base_env: dict, samples: int, gap: float, logdir: Path) -> dict:
    prefix = f"bench{secrets.token_hex(3)}:"
    toml = logdir / "zero_wait.toml"
    toml.write_text("wait_window_s = 0.001\n")  # the config requires > 0; this is zero for all purposes
    env = {**base_env, "REWARDLOOP_PREFIX": prefix, "REWARDLOOP_REWARD_CONFIG": str(toml)}
    procs = [start(env, logdir / "worker_lat.log", "worker"), start(env, logdir / "beat_lat.log", "beat")]
    try:
        write_replies(r, prefix, ["warm"], with_thumbs=False)
        wait_until(lambda: acked(r, prefix) >= 1, 180, "the worker to start")
        sent = {}
        for i in range(samples):
            rid = f"lat{i}"
            write_replies(r, prefix, [rid], with_thumbs=True)
            sent[rid] = float(r.xrevrange(f"{prefix}events", count=1)[0][1]["server_time"])
            time.sleep(gap)
        wait_until(lambda: sum(f["reply_id"] in sent for _, f in r.xrange(f"{prefix}rewards")) >= samples, 120,
                   "the final rewards")
        lat = sorted(float(f["finalized_at"]) - sent[f["reply_id"]] for _, f in r.xrange(f"{prefix}rewards")
                     if f["reply_id"] in sent)
        q = statistics.quantiles(lat, n=100)
        return {"samples": len(lat), "p50_s": round(statistics.median(lat), 3), "p95_s": round(q[94], 3),
                "max_s": round(lat[-1], 3), "events_every_s": float(env.get("REWARDLOOP_WORKER_EVENTS_EVERY_S", 1.0))}
    finally:
        stop(procs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=6000, help="events per throughput run (default 6000)")
    ap.add_argument("--workers", default="1,2", help="worker process counts to compare (default 1,2)")
    ap.add_argument("--events-every", type=float, default=0.2,
                    help="beat period of process_events in the throughput runs (default 0.2 s)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="throughput runs per worker count, interleaved; the median is reported (default 2)")
    ap.add_argument("--samples", type=int, default=40, help="latency samples (default 40)")
    ap.add_argument("--gap", type=float, default=0.25, help="seconds between latency samples (default 0.25)")
    ap.add_argument("--logs", type=Path, help="keep worker and beat logs in this folder (default: discarded)")
    ap.add_argument("--skip-latency", action="store_true", help="only measure throughput")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rewards.json", help="JSON output")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        logdir = args.logs or tmp
        logdir.mkdir(parents=True, exist_ok=True)
        server = None
        url = os.environ.get("REWARDLOOP_REDIS_URL")
        if not url:
            server = EmbeddedRedis(tmp)
            url = server.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDLOOP_")}
        env.update({"REWARDLOOP_REDIS_URL": url, "REWARDLOOP_DATA_DIR": str(tmp), "PYTHONUNBUFFERED": "1",
                    "OMP_NUM_THREADS": "1"})
        r = redis.Redis.from_url(url, decode_responses=True, protocol=2)
        try:
            counts = [int(k) for k in args.workers.split(",")]
            # interleaved repeats: a noisy neighbour on a shared machine hits every count alike
            all_runs = [throughput(r, env, k, args.events, logdir, args.events_every)
                        for _ in range(args.repeat) for k in counts]
            per_count = {k: [x["events_per_s"] for x in all_runs if x["workers"] == k] for k in counts}
            runs = [{"workers": k, "events": args.events // 2 * 2, "events_per_s": round(statistics.median(v), 1),
                     "runs_events_per_s": v} for k, v in per_count.items()]
            lat = None if args.skip_latency else latency(r, env, args.samples, args.gap, logdir)
        finally:
            r.close()
            if server:
                server.stop()
    result = {"throughput": runs, "latency": lat, "events_every_s": args.events_every, "cpus": os.cpu_count(), "redis": "embedded" if server else url,
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"{'workers':>7} {'events':>7} {'events/s (median)':>18}  runs")
    for run in runs:
        print(f"{run['workers']:>7} {run['events']:>7} {run['events_per_s']:>18.1f}  "
              f"{', '.join(f'{x:.0f}' for x in run['runs_events_per_s'])}")
    if lat:
        print(f"\nfeedback -> final reward (wait window 0, process_events every {lat['events_every_s']:g} s): "
              f"p50 {lat['p50_s']:.3f} s, p95 {lat['p95_s']:.3f} s, max {lat['max_s']:.3f} s over {lat['samples']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
