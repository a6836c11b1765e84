"""Benchmark the reward workers: events per second through real `rewardloop worker` processes
(1, 2 and 4 workers, same run, interleaved repeats), and feedback-to-final-reward latency with
a zero wait window, idle and under a steady intake.

Throughput: N events (half `reply`, half `thumbs` on those replies; each reply record carries the
`quality` scores the server writes at a reply's end) are written to a fresh prefix in one
pipeline; the clock runs from the start of the write (which competes for the same CPUs, as
intake would) until the workers have acked them all (each worker process's event consumer reads
them with a blocking XREADGROUP; beat runs as deployed). In the same run, interleaved, the same
events go to a bare consumer (as many processes, XREADGROUP + XACK only, same batch and block):
the pipeline's events/s as a ratio to it is the figure that survives a noisy machine.
`--before REF` adds the reward workers of an earlier commit (its tree exported with `git
archive`) to the same interleaving: their ratio against the same bare consumer is what the
pipeline did before, so "now / before" says what the changes since REF cost.
Latency: one reply + thumbs every --gap seconds (idle), then --load-rate events/s written in
50 ms chunks for --load-s seconds (under load); latency = the final reward's finalized_at minus
the thumbs event's server time. Redis: REWARDLOOP_REDIS_URL, else an embedded one
(appendfsync always, as `rewardloop up` runs it).

    .venv/bin/python bench/rewards.py                 # prints a table, writes bench/results/rewards.json
    .venv/bin/python bench/rewards.py --events 20000 --workers 1,2,4 --repeat 3
    .venv/bin/python bench/rewards.py --workers 1 --repeat 3 --skip-latency --before d6844df^
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

# what the server stores with a reply it scored (core/reply_scoring.py): the worker parses it and
# adds safety, relevance and fluency to every reward
QUALITY = json.dumps({"unsafe": 0.031, "safety_scorer": "alt-profanity-check", "relevance": 0.42, "fluency": -0.17,
                      "relevance_pmi": 0.61, "fluency_logprob": -2.35, "scored_tokens": 5})
GROUP, BATCH, BLOCK_MS = "rewarders", 500, 1000   # as worker/rewards/ledger.py, processor.py, consumer.py


def start(env: dict, log: Path, *argv: str, checkout: Path = REPO) -> subprocess.Popen:
    env = {**env, "PYTHONPATH": str(checkout)}   # that checkout's code, whatever is installed
    return subprocess.Popen([sys.executable, "-m", "service.cli", *argv], env=env, cwd=checkout,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def bare_consumer(url: str, prefix: str, name: str) -> None:
    """The floor every consumer pays: read a batch (blocking), ack it; nothing else."""
    from core.redis_conn import connect
    r, stream = connect(url), f"{prefix}events"
    try:
        r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    while True:
        reply = r.xreadgroup(GROUP, name, {stream: ">"}, count=BATCH, block=BLOCK_MS)
        if reply and reply[0][1]:
            r.xack(stream, GROUP, *[sid for sid, _ in reply[0][1]])


def start_bare(env: dict, log: Path, i: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--bare-consumer", env["REWARDLOOP_REDIS_URL"],
                             env["REWARDLOOP_PREFIX"], f"bare-{i}"], env=env, cwd=REPO, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def export_tree(ref: str, dest: Path) -> Path:
    """The files of commit `ref` in dest (git archive: no worktree, no change to the repository)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


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


def write_replies(r: redis.Redis, prefix: str, ids: list[str], with_thumbs: bool, atomic: bool = False) -> float:
    """atomic: one transaction, so a worker never sees a reply without its thumbs (with no wait
    window a reply read alone is final before its feedback arrives)."""
    now = time.time()
    with r.pipeline(transaction=atomic) as p:
        for rid in ids:
            p.hset(f"{prefix}reply:{rid}", mapping={"reply_id": rid, "user_id": "bench", "session_id": "s_bench",
                                                     "adapter_version": "base", "text": "A short benchmark reply.",
                                                     "n_tokens": 5, "finish_reason": "stop", "ended_at": repr(now),
                                                     "quality": QUALITY})
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


def drained(r: redis.Redis, prefix: str, last_id: str) -> bool:
    """Every event up to last_id delivered to the group and acked (the same test for any consumer)."""
    try:
        group = next(g for g in r.xinfo_groups(f"{prefix}events") if g["name"] == GROUP)
    except (StopIteration, redis.ResponseError):
        return False
    done = group["last-delivered-id"].split("-")
    last = last_id.split("-")
    return group["pending"] == 0 and (int(done[0]), int(done[1])) >= (int(last[0]), int(last[1]))


def last_event(r: redis.Redis, prefix: str) -> str:
    return r.xrevrange(f"{prefix}events", count=1)[0][0]


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise SystemExit(f"bench: timed out after {timeout}s waiting for {what}")


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and all their children."""
    import psutil
    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            for q in [p, *p.children(recursive=True)]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def rewards_written(r: redis.Redis, prefix: str) -> int:
    return r.xlen(f"{prefix}rewards")


def throughput(r, base_env: dict, n_workers: int, n_events: int, logdir: Path, redis_pid: int | None, *,
               kind: str = "pipeline", checkout: Path = REPO, finalize: bool = False) -> dict:
    """kind: "pipeline" (reward workers + beat of `checkout`) or "bare" (bare consumers).
    finalize: a zero wait window, and the clock runs until every reply's reward is final too."""
    prefix = f"bench{secrets.token_hex(3)}:"
    env = {**base_env, "REWARDLOOP_PREFIX": prefix}
    finalize_all, finalize = finalize, finalize and kind != "bare"
    if finalize:
        toml = logdir / "zero_wait.toml"
        toml.write_text("wait_window_s = 0.001\n")  # the config requires > 0; this is zero for all purposes
        env["REWARDLOOP_REWARD_CONFIG"] = str(toml)
    if kind == "bare":
        procs = [start_bare(env, logdir / f"bare{n_workers}.log", i) for i in range(n_workers)]
    else:
        procs = [start(env, logdir / f"worker{n_workers}.log", "worker", "--queues", "rewards,ops", checkout=checkout)
                 for _ in range(n_workers)]
        procs.append(start(env, logdir / f"beat{n_workers}.log", "beat", checkout=checkout))
    try:
        # warm up: every consumer process has imported everything and holds a Redis connection
        write_replies(r, prefix, [f"warm{i}" for i in range(n_workers * 4)], with_thumbs=False)
        warm = last_event(r, prefix)
        wait_until(lambda: drained(r, prefix, warm), 180, f"the {kind} consumers to start")
        wait_until(lambda: len(r.xinfo_consumers(f"{prefix}events", GROUP)) >= n_workers, 180,
                   "every worker's consumer")
        if finalize:
            wait_until(lambda: rewards_written(r, prefix) >= n_workers * 4, 60, "the warm-up rewards")
        base = rewards_written(r, prefix)
        workers = [p.pid for p in procs[:n_workers]]
        cpu0 = (cpu_s(workers), cpu_s([redis_pid]) if redis_pid else 0.0)
        t0 = time.perf_counter()
        # atomic with --finalize: a reply read without its thumbs would be final before its feedback
        write_replies(r, prefix, [f"rep{i}" for i in range(n_events // 2)], with_thumbs=True, atomic=finalize_all)
        last = last_event(r, prefix)
        wait_until(lambda: drained(r, prefix, last), 600, "the events to be processed")
        if finalize:
            wait_until(lambda: rewards_written(r, prefix) - base >= n_events // 2, 600, "the final rewards")
        elapsed = time.perf_counter() - t0
        cpu1 = (cpu_s(workers), cpu_s([redis_pid]) if redis_pid else 0.0)
        consumers = r.xinfo_consumers(f"{prefix}events", "rewarders")
        n = n_events // 2 * 2
        # CPU per 1k events says what more cores would give (the 2-core box is shared with Redis
        # and the writer; Redis's share includes writing the events, which intake pays anyway)
        return {"kind": kind, "workers": n_workers, "events": n, "seconds": round(elapsed, 3),
                "events_per_s": round(n / elapsed, 1), "consumers": len(consumers),
                "worker_cpu_ms_per_1k": round((cpu1[0] - cpu0[0]) * 1e6 / n, 1),
                "redis_cpu_ms_per_1k": round((cpu1[1] - cpu0[1]) * 1e6 / n, 1) if redis_pid else None}
    finally:
        stop(procs)


def final_latencies(r, prefix: str, sent: dict[str, float]) -> list[float]:
    return sorted(float(f["finalized_at"]) - sent[f["reply_id"]] for _, f in r.xrange(f"{prefix}rewards")
                  if f["reply_id"] in sent)


def summary(lat: list[float], **extra) -> dict:
    q = statistics.quantiles(lat, n=100)
    return {"samples": len(lat), "p50_s": round(statistics.median(lat), 4), "p95_s": round(q[94], 4),
            "max_s": round(lat[-1], 4), **extra}


def latency(r, base_env: dict, samples: int, gap: float, load_rate: float, load_s: float, logdir: Path) -> dict:
    prefix = f"bench{secrets.token_hex(3)}:"
    toml = logdir / "zero_wait.toml"
    toml.write_text("wait_window_s = 0.001\n")  # the config requires > 0; this is zero for all purposes
    env = {**base_env, "REWARDLOOP_PREFIX": prefix, "REWARDLOOP_REWARD_CONFIG": str(toml)}
    procs = [start(env, logdir / "worker_lat.log", "worker"), start(env, logdir / "beat_lat.log", "beat")]
    try:
        write_replies(r, prefix, ["warm"], with_thumbs=False)
        wait_until(lambda: acked(r, prefix) >= 1, 180, "the worker to start")
        idle = {}
        for i in range(samples):
            rid = f"lat{i}"
            write_replies(r, prefix, [rid], with_thumbs=True, atomic=True)
            idle[rid] = float(r.xrevrange(f"{prefix}events", count=1)[0][1]["server_time"])
            time.sleep(gap)
        # under load: chunks every 50 ms, each thumbs' server time taken as it is queued
        loaded, chunk, i = {}, max(1, round(load_rate * 0.05 / 2)), 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < load_s:
            ids = [f"load{i + j}" for j in range(chunk)]
            i += chunk
            now = write_replies(r, prefix, ids, with_thumbs=True, atomic=True)
            loaded.update(dict.fromkeys(ids, now))
            time.sleep(max(0.0, t0 + i / (load_rate / 2) - time.monotonic()))
        rate = 2 * i / (time.monotonic() - t0)
        want = len(idle) + len(loaded)
        wait_until(lambda: sum(f["reply_id"] in idle or f["reply_id"] in loaded
                               for _, f in r.xrange(f"{prefix}rewards")) >= want, 120, "the final rewards")
        return {"idle": summary(final_latencies(r, prefix, idle), gap_s=gap),
                "load": summary(final_latencies(r, prefix, loaded), events_per_s=round(rate, 1))}
    finally:
        stop(procs)


def reward_function_cost(n: int = 20000) -> dict:
    """Microseconds per reply of what the worker does for quality, in this process, side by side:
    compute_reward of a reply with a thumbs, without and with the stored quality scores (parsed from
    the record's JSON as signals.reply_facts does). Best of 3 passes over n replies."""
    import timeit

    from worker.rewards.config import RewardConfig
    from worker.rewards.function import compute_reward
    from worker.rewards.signals import reply_facts
    cfg = RewardConfig()
    record = {"reply_id": "r", "text": "A short benchmark reply.", "n_tokens": "5", "finish_reason": "stop",
              "ended_at": "100.0", "user_id": "bench"}
    sigs = [{"kind": "thumbs", "value": 1, "ts": 104.0, "user_id": "bench", "event_id": "e"}]
    out = {}
    for name, rec in (("without_quality", record), ("with_quality", {**record, "quality": QUALITY})):
        best = min(timeit.repeat(lambda rec=rec: compute_reward(reply_facts(rec), sigs, cfg), number=n, repeat=3))
        out[f"{name}_us"] = round(best / n * 1e6, 2)
    out["added_us"] = round(out["with_quality_us"] - out["without_quality_us"], 2)
    return out


KIND_LABEL = {"bare": "bare consumer (XREADGROUP + XACK)", "pipeline": "reward pipeline (this checkout)"}


def summarize(all_runs: list[dict], counts: list[int], kinds: list[str], events: int) -> list[dict]:
    """Per worker count and consumer kind: median events/s, and the median over repeats of its ratio
    to the bare consumer of the same repeat (runs next to each other in time share the noise)."""
    out = []
    one = statistics.median(x["events_per_s"] for x in all_runs if x["kind"] == "pipeline" and x["workers"] == counts[0])
    for k in counts:
        bare = [x["events_per_s"] for x in all_runs if x["kind"] == "bare" and x["workers"] == k]
        for kind in kinds:
            mine = [x for x in all_runs if x["kind"] == kind and x["workers"] == k]
            rates = [x["events_per_s"] for x in mine]
            out.append({"workers": k, "kind": kind, "events": events // 2 * 2,
                        "events_per_s": round(statistics.median(rates), 1),
                        "vs_bare": round(statistics.median(a / b for a, b in zip(rates, bare)), 3),
                        "vs_first": round(statistics.median(rates) / one, 2), "runs_events_per_s": rates,
                        "worker_cpu_ms_per_1k": statistics.median(x["worker_cpu_ms_per_1k"] for x in mine),
                        "redis_cpu_ms_per_1k": statistics.median(x["redis_cpu_ms_per_1k"] or 0 for x in mine)})
    return out


def print_throughput(runs: list[dict], labels: dict) -> None:
    print(f"{'workers':>7}  {'consumer':<40} {'events/s (median)':>18} {'x bare':>7} {'worker CPU ms/1k':>17} "
          f"{'Redis CPU ms/1k':>16}  runs")
    for run in runs:
        print(f"{run['workers']:>7}  {labels[run['kind']]:<40} {run['events_per_s']:>18.1f} {run['vs_bare']:>7.3f} "
              f"{run['worker_cpu_ms_per_1k']:>17.1f} {run['redis_cpu_ms_per_1k']:>16.1f}  "
              f"{', '.join(f'{x:.0f}' for x in run['runs_events_per_s'])}")
    for k in sorted({r["workers"] for r in runs}):
        by = {r["kind"]: r for r in runs if r["workers"] == k}
        if "before" in by:
            print(f"{k} worker(s): pipeline now / before, each as a ratio to the bare consumer: "
                  f"{by['pipeline']['vs_bare'] / by['before']['vs_bare']:.3f}")


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--bare-consumer":   # a child of this bench
        bare_consumer(*sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20000, help="events per throughput run (default 20000)")
    ap.add_argument("--workers", default="1,2,4", help="worker process counts to compare (default 1,2,4)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="throughput runs per worker count, interleaved; the median is reported (default 2)")
    ap.add_argument("--before", metavar="REF", help="also run the reward workers of this commit, interleaved")
    ap.add_argument("--finalize", action="store_true", help="zero wait window: the clock runs until every reply's "
                    "reward is also final (the reward function, quality components and ledger write included)")
    ap.add_argument("--samples", type=int, default=40, help="latency samples (default 40)")
    ap.add_argument("--gap", type=float, default=0.25, help="seconds between idle latency samples (default 0.25)")
    ap.add_argument("--load-rate", type=float, default=2000, help="events/s of the latency-under-load phase (default 2000)")
    ap.add_argument("--load-s", type=float, default=10, help="seconds of the latency-under-load phase (default 10)")
    ap.add_argument("--logs", type=Path, help="keep worker and beat logs in this folder (default: discarded)")
    ap.add_argument("--skip-latency", action="store_true", help="only measure throughput")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rewards.json", help="JSON output")
    args = ap.parse_args()

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    labels = dict(KIND_LABEL)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        logdir = args.logs or tmp
        logdir.mkdir(parents=True, exist_ok=True)
        checkouts = {"bare": REPO, "pipeline": REPO}
        if args.before:
            sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.before], check=True,
                                 capture_output=True, text=True).stdout.strip()
            checkouts["before"] = export_tree(args.before, tmp / "before")
            labels["before"] = f"reward pipeline at {args.before} ({sha})"
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
            # interleaved repeats: a noisy neighbour on a shared machine hits every count and kind alike
            redis_pid = server.proc.pid if server else None
            all_runs = [throughput(r, env, k, args.events, logdir, redis_pid, kind=kind, checkout=where,
                                   finalize=args.finalize)
                        for _ in range(args.repeat) for k in counts for kind, where in checkouts.items()]
            runs = summarize(all_runs, counts, list(checkouts), args.events)
            lat = None if args.skip_latency else latency(r, env, args.samples, args.gap, args.load_rate, args.load_s,
                                                         logdir)
        finally:
            r.close()
            if server:
                server.stop()
    fn_cost = reward_function_cost()
    result = {"throughput": runs, "labels": labels, "finalize": args.finalize, "reward_function": fn_cost, "latency": lat, "cpus": os.cpu_count(),
              "load_avg_at_start": load_at_start, "redis": "embedded" if server else url,
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print_throughput(runs, labels)
    print(f"\nreward function per reply, one process: {fn_cost['without_quality_us']:.1f} us without the stored quality "
          f"scores, {fn_cost['with_quality_us']:.1f} us with them (+{fn_cost['added_us']:.1f} us: parse, safety, "
          "relevance, fluency, veto)")
    if lat:
        print("\nfeedback -> final reward, wait window 0, one worker:")
        for name, x in lat.items():
            what = f"one every {x['gap_s']:g} s" if name == "idle" else f"under {x['events_per_s']:.0f} events/s"
            print(f"  {what:<24} p50 {x['p50_s']:.3f} s, p95 {x['p95_s']:.3f} s, max {x['max_s']:.3f} s "
                  f"over {x['samples']}")
    print(f"(load average at start: {load_at_start}, {os.cpu_count()} CPUs)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
