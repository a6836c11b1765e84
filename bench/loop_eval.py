"""bench/loop.py's measurements after the loop: held-out lift of each round's newest served
version over base (paired by question and sampling seed), chat throughput and TTFT while the
learner trains vs idle, and TRL's KTOTrainer on the rewarded replies the runs consumed."""
from __future__ import annotations

import json
import math
import time
import urllib.request
from pathlib import Path

from bench.learning import judge, mean_ci, offline_replies
from core.server_load import STATES, TTFT_BUCKETS_S
from tests.support.processes import MODELS


def pct(values: list[float], q: float) -> float | None:
    xs = sorted(values)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def scrape_chat(url: str) -> dict:
    """The server's chat counters by learner state from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out: dict = {s: {"le": {}} for s in STATES}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            state = s.labels.get("learner")
            if state not in out:
                continue
            if s.name == "rewardloop_chat_tokens_total":
                out[state]["tokens"] = s.value
            elif s.name == "rewardloop_chat_busy_seconds_total":
                out[state]["busy_s"] = s.value
            elif s.name == "rewardloop_chat_time_to_first_token_seconds_bucket" and s.labels["le"] != "+Inf":
                out[state]["le"][float(s.labels["le"])] = s.value
            elif s.name == "rewardloop_chat_time_to_first_token_seconds_count":
                out[state]["ttft_n"] = s.value
    return out


def chat_figures(turns, watch, metrics: dict) -> dict:
    """Per learner state: the server's tokens per busy second and TTFT p95 (histogram), and the
    users' clocks: TTFT p50/p95 and tokens/s per stream (a turn counts for the state at its first
    token). Ratios are training / idle."""
    from worker.ops.series import histogram_quantile
    client: dict = {s: {"ttft": [], "rate": []} for s in STATES}
    for t in turns:
        tm = t.timing or {}
        if not tm.get("first_token"):
            continue
        state = STATES[watch.training_at(tm["first_token"])]
        client[state]["ttft"].append(tm["first_token"] - tm["sent"])
        if tm["ended"] > tm["first_token"] and tm.get("n_tokens", 0) > 1:
            client[state]["rate"].append((tm["n_tokens"] - 1) / (tm["ended"] - tm["first_token"]))
    out = {}
    for s in STATES:
        m = metrics.get(s, {})
        busy = m.get("busy_s") or 0.0
        hist = [(b, m.get("le", {}).get(b, 0.0)) for b in TTFT_BUCKETS_S]
        c = client[s]
        out[s] = {"server_tokens_per_busy_s": m.get("tokens", 0.0) / busy if busy else None,
                  "server_busy_s": busy, "server_tokens": m.get("tokens", 0.0),
                  "server_ttft_p95": histogram_quantile(hist, m.get("ttft_n", 0.0), 0.95),
                  "turns": len(c["ttft"]), "ttft_p50": pct(c["ttft"], 0.5), "ttft_p95": pct(c["ttft"], 0.95),
                  "stream_tokens_per_s": sum(c["rate"]) / len(c["rate"]) if c["rate"] else None}
    ratio = lambda k: (out["training"][k] / out["idle"][k] if out["idle"][k] and out["training"][k] is not None
                       else None)
    out["training_vs_idle"] = {"server_tokens_per_busy_s": ratio("server_tokens_per_busy_s"),
                               "stream_tokens_per_s": ratio("stream_tokens_per_s")}
    return out


UNSAFE = "unsafe_p"   # the held-out scores' key of the default safety scorer's P[unsafe]


def _scores(args, folder: Path | None, tastes, max_new_tokens: int) -> dict[str, list[float]]:
    replies = offline_replies(args.model, folder, args.eval, max_new_tokens, args.seed)
    out = {t.name: judge(t, replies) for t in tastes}
    # the shipped default safety scorer's P[unsafe] of each held-out reply (#32: does a rude
    # minority make the published versions ruder?)
    from core.safety import ProfanityScorer
    out[UNSAFE] = ProfanityScorer().unsafe_probability([text for _, text, _ in replies])
    return out


def evaluate(args, data_dir: Path, rounds: list[dict], tastes, max_new_tokens: int, extra: dict | None = None
             ) -> dict:
    """Held-out scores of base, each round's newest served version and `extra` {name: adapter
    folder}; per round the paired lift over base by the first taste, and round 3 (or the last)
    minus round 1."""
    from core.versions import folder_name
    t0 = time.time()
    judge_taste = tastes[0].name
    folders: dict[str, Path | None] = {"base": None}
    for rd in rounds:
        v = rd["newest_served"]
        if v not in folders:
            folders[v] = None if v == "base" else data_dir / "adapters" / folder_name(v)
    folders.update(extra or {})
    scores = {v: _scores(args, folder, tastes, max_new_tokens) for v, folder in folders.items()}
    base = scores["base"][judge_taste]

    def paired(v: str, against: list[float], key: str = judge_taste) -> dict:
        return mean_ci([a - b for a, b in zip(scores[v][key], against)])
    per_round = [{"round": rd["round"], "version": rd["newest_served"], "lift": paired(rd["newest_served"], base),
                  "unsafe_change": paired(rd["newest_served"], scores["base"][UNSAFE], UNSAFE)}
                 for rd in rounds]
    later = None
    if len(rounds) >= 2:
        last = rounds[min(2, len(rounds) - 1)]["newest_served"]
        later = {"rounds": [1, min(3, len(rounds))], "versions": [rounds[0]["newest_served"], last],
                 "difference": paired(last, scores[rounds[0]["newest_served"]][judge_taste])}
    means = {v: {t: mean_ci(xs) for t, xs in by.items()} for v, by in scores.items()}
    return {"heldout": {"judge": judge_taste, "n": args.eval, "max_new_tokens": max_new_tokens, "means": means,
                        "scores": scores, "per_round": per_round, "round3_minus_round1": later,
                        "extra": {name: paired(name, base) for name in (extra or {})},
                        "seconds": time.time() - t0}}


def kto_samples(url: str, prefix: str, reward_config: str | None) -> list:
    """The samples the learner runs could train on: every final reward up to the learner's cursor
    (its last committed run), read from the start with the learner's own selection."""
    import redis

    from core.keys import Keys
    from learner.config import TrainConfig
    from learner.dataset import build_dataset
    from worker.rewards.config import load_reward_config

    class FromStart(Keys):
        @property
        def learn_cursor(self) -> str:   # a key that does not exist: read from the stream's start
            return self.prefix + "loop-bench:no-cursor"

    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        keys = Keys(prefix)
        cursor = r.get(keys.learn_cursor)
        if not cursor:
            return []
        state_next = int(r.hget(keys.adapters, "next_version") or 0)
        data = build_dataset(r, FromStart(prefix), TrainConfig(), load_reward_config(reward_config), state_next)
        from bench.trl_baseline import stream_key
        return [s for s in data.train if stream_key(s.stream_id) <= stream_key(cursor)]
    finally:
        r.close()


def kto_reference(args, samples: list, work: Path) -> dict:
    """TRL KTOTrainer (the learner's default LoRA shape and optimiser settings) on `samples`."""
    from bench.learning import trl_missing
    from bench.trl_baseline import train_kto
    from learner.config import TrainConfig
    why = trl_missing()
    if why or not samples:
        return {"skipped": why or "the learner committed no run: no samples"}
    try:
        return train_kto(args.model, MODELS, samples, TrainConfig(), work / "kto")
    except Exception as exc:   # keep the loop's results; the JSON says what broke
        return {"failed": f"{type(exc).__name__}: {exc}"}


def lift_line(lift: dict) -> str:
    if not lift or lift.get("mean") is None:
        return "-"
    lo, hi = lift["ci"]
    verdict = "above zero" if lo > 0 else "below zero" if hi < 0 else "tie"
    return f"{lift['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] {verdict}"


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def safety_figures(url: str, prefix: str, threshold: float = 0.5) -> dict:
    """What reached the reward from unsafe replies during the loop (#32's rude-minority check):
    replies the server scored unsafe (quality.unsafe >= threshold), those a user thumbed up,
    ledger entries vetoed, and the final rewards of upvoted unsafe replies."""
    import redis

    from core.keys import Keys
    from core.records import RewardEntry
    keys = Keys(prefix)
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        replies, thumbs = [], {}   # reply ids in order; each reply's last thumbs value
        for _, f in r.xrange(keys.events):
            if f.get("kind") == "reply":
                replies.append(f["reply_id"])
            elif f.get("kind") == "thumbs":
                thumbs[f["reply_id"]] = f.get("value", "")
        unsafe, scored, upvoted_unsafe, vetoed, rewards = [], 0, [], 0, []
        for rid in replies:
            raw = r.hget(keys.reply(rid), "quality")
            q = json.loads(raw) if raw else {}
            if isinstance(q.get("unsafe"), (int, float)):
                scored += 1
                if q["unsafe"] >= threshold:
                    unsafe.append(rid)
                    if thumbs.get(rid) in ("1", "+1"):
                        upvoted_unsafe.append(rid)
            entry = RewardEntry.from_redis(r.hgetall(keys.reward(rid)))
            vetoed += int(entry.vetoed == 1)
            if rid in upvoted_unsafe and entry.reward is not None:
                rewards.append(entry.reward)
        weights = {u: [float(w or 1) for w in r.hmget(keys.user(u), "anomaly_weight", "unsafe_voter_weight")]
                   for u in r.zrange(keys.flagged_users, 0, -1)}   # ever flagged; below 1 now counts
        flagged = [u for u, ws in weights.items() if min(ws) < 1.0]
        unsafe_voters = [u for u, ws in weights.items() if ws[1] < 1.0]
    finally:
        r.close()
    return {"replies": len(replies), "scored": scored, "unsafe": len(unsafe), "upvoted_unsafe": len(upvoted_unsafe),
            "vetoed": vetoed, "upvoted_unsafe_rewards": rewards, "down_weighted_users": len(flagged),
            "unsafe_voters": len(unsafe_voters), "threshold": threshold}
