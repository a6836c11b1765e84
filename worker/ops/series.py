"""Per-minute operator time series: what each final reward and feedback event adds to its
bucket, and how a bucket reads back as figures (mean reward with a 95% CI per adapter
version, signal mix, coverage, latency, events/s). Pure: no Redis (worker/ops_store.py
stores the buckets as hashes and applies the increments with HINCRBYFLOAT).

A bucket is a flat {field: number} map; fields are "{counter}|{version}" so one hash holds
every version of one minute (or hour: the same increments go to both, each with its own TTL,
which is the downsampling). Only sums and counts are stored, so buckets merge by addition and
a mean/CI over any span is exact.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Iterable, Mapping

from core import versions
from core.server_load import STATES, TTFT_BUCKETS_S
from worker.ops.style import style_figures

ALL = "*"  # version label of counters that are not per version (events/s)
Z95 = 1.959963984540054
READING_WPM = 230.0  # same default as worker/reward_config.py: expected reading time of a reply
DWELL_RATIO_CAP = 10.0  # one tab left open for an hour must not dominate a minute's mean
LATENCY_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)  # reward latency histogram
FINAL_STATES = ("rewarded", "defaulted", "unscored", "excluded")
PER_REPLY_SIGNALS = ("continuation", "regenerate", "copy", "abandon")  # 0/1 per final reply
SIGNAL_KINDS = ("thumbs", "rating", "continuation", "regenerate", "copy", "dwell", "abandon")

# name -> (numerator counter, denominator counter): the signal mix shown on /ops
SIGNAL_MIX = {
    "thumbs_up_rate": ("thumbs_up", "thumbs_n"),
    "mean_rating": ("rating_sum", "rating_n"),
    "continuation_rate": ("continuation", "replies"),
    "regenerate_rate": ("regenerate", "replies"),
    "copy_rate": ("copy", "replies"),
    "dwell_ratio": ("dwell_sum", "dwell_n"),
    "abandon_rate": ("abandon", "replies"),
}


def field(counter: str, version: str) -> str:
    return f"{counter}|{version}"


def split_field(name: str) -> tuple[str, str]:
    counter, _, version = name.partition("|")
    return counter, version


def floor_to(ts: float, step_s: int) -> int:
    return int(ts // step_s * step_s)


def _num(raw) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _version(fields: Mapping[str, str]) -> str:
    return fields.get("adapter_version") or "unknown"


# ---------------------------------------------------------------- what one entry adds


def reward_increments(fields: Mapping[str, str], ended_at: float | None) -> dict[str, float]:
    """One `rewards` stream entry -> bucket increments. The mean reward counts only replies
    that got a signal (state rewarded): defaulted rewards are a constant that would dilute a
    drop; coverage shows how many that leaves out."""
    v = _version(fields)
    state = fields.get("state", "")
    inc: dict[str, float] = {field("final_" + state, v): 1.0} if state in FINAL_STATES else {}
    reward = _num(fields.get("reward"))
    if state == "rewarded" and reward is not None:
        inc.update({field("reward_n", v): 1.0, field("reward_sum", v): reward,
                    field("reward_sq", v): reward * reward})
    finalized = _num(fields.get("finalized_at"))
    if finalized is not None and ended_at is not None:
        latency = max(0.0, finalized - ended_at)
        inc.update({field("latency_n", v): 1.0, field("latency_sum", v): latency})
    return inc


def latency_seconds(fields: Mapping[str, str], ended_at: float | None) -> float | None:
    finalized = _num(fields.get("finalized_at"))
    return None if finalized is None or ended_at is None else max(0.0, finalized - ended_at)


def latency_bucket_increments(latency: float) -> dict[str, float]:
    """Cumulative histogram counters (Prometheus `le` buckets) for the all-time totals."""
    inc = {field(f"latency_le_{b}", ALL): 1.0 for b in LATENCY_BUCKETS_S if latency <= b}
    inc.update({field("latency_count", ALL): 1.0, field("latency_total", ALL): latency})
    return inc


def dwell_ratio(visible_ms: float, words: int, wpm: float = READING_WPM) -> float | None:
    if words <= 0 or visible_ms < 0:
        return None
    expected_ms = words / wpm * 60_000.0
    return min(DWELL_RATIO_CAP, visible_ms / expected_ms)


TAG_PREFIX = "tag:"  # counter of one feedback reason tag: "tag:unsafe|3"


def tag_names(raw: str | None) -> list[str]:
    """The reason tags of an event's `tags` field (a JSON list; the server validated them)."""
    try:
        tags = json.loads(raw) if raw else []
    except ValueError:
        return []
    return [t for t in tags if isinstance(t, str) and t.isidentifier()] if isinstance(tags, list) else []


def tag_counts(totals: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, int]]:
    """{version: {tag: count}} from counters read back by version (by_version)."""
    out = {}
    for v, counters in totals.items():
        tags = {c[len(TAG_PREFIX):]: int(n) for c, n in counters.items() if c.startswith(TAG_PREFIX) and n}
        if tags:
            out[v] = dict(sorted(tags.items()))
    return dict(sorted(out.items(), key=lambda kv: versions.sort_key(kv[0])))


def event_increments(fields: Mapping[str, str], words: int | None = None) -> dict[str, float]:
    """One `events` stream entry -> bucket increments. `words` (of the reply) is needed for
    dwell events only: the dwell ratio is visible time over the expected reading time. Each
    reason tag of a feedback counts once for the reply's version."""
    kind = fields.get("kind", "")
    v = _version(fields)
    inc = {field("events", ALL): 1.0}
    for tag in tag_names(fields.get("tags")):
        inc[field(TAG_PREFIX + tag, v)] = 1.0
    if kind == "reply":
        inc[field("replies", v)] = 1.0
    elif kind == "thumbs":
        value = _num(fields.get("value"))
        if value is not None:
            inc.update({field("thumbs_n", v): 1.0, field("thumbs_up", v): float(value > 0)})
    elif kind == "rating":
        value = _num(fields.get("value"))
        if value is not None:
            inc.update({field("rating_n", v): 1.0, field("rating_sum", v): value})
    elif kind == "dwell":
        value = _num(fields.get("value"))
        ratio = dwell_ratio(value, words or 0) if value is not None else None
        if ratio is not None:
            inc.update({field("dwell_n", v): 1.0, field("dwell_sum", v): ratio})
    elif kind in SIGNAL_KINDS:
        inc[field(kind, v)] = 1.0
    return inc


def detector_values(fields: Mapping[str, str], words: int | None = None,
                    stream: str = "events") -> list[tuple[str, float]]:
    """(metric, value) pairs one entry feeds to the sequential drift detectors."""
    if stream == "rewards":
        reward = _num(fields.get("reward"))
        out = [("reward", reward)] if fields.get("state") == "rewarded" and reward is not None else []
        if "components" in fields:  # per-reply rates of the implicit signals, once the reply is final
            fired = set(filter(None, fields["components"].split(",")))
            out += [(f"{kind}_rate", float(kind in fired)) for kind in PER_REPLY_SIGNALS]
        return out
    kind, value = fields.get("kind", ""), _num(fields.get("value"))
    if value is None:
        return []
    if kind == "thumbs":
        return [("thumbs_up", float(value > 0))]
    if kind == "rating":
        return [("rating", value)]
    if kind == "dwell":
        ratio = dwell_ratio(value, words or 0)
        return [("dwell_ratio", ratio)] if ratio is not None else []
    return []


def add(into: dict, key, inc: Mapping[str, float]) -> None:
    """into[key][field] += inc[field] (into: defaultdict of dicts or plain dict)."""
    bucket = into.setdefault(key, {})
    for name, value in inc.items():
        bucket[name] = bucket.get(name, 0.0) + value


# ---------------------------------------------------------------- reading buckets back


def by_version(bucket: Mapping[str, str | float]) -> dict[str, dict[str, float]]:
    """{"reward_n|3": "4", ...} -> {"3": {"reward_n": 4.0}, ...}"""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for name, raw in bucket.items():
        counter, version = split_field(name)
        value = _num(raw)
        if version and value is not None:
            out[version][counter] = out[version].get(counter, 0.0) + value
    return dict(out)


def merge(buckets: Iterable[Mapping[str, str | float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bucket in buckets:
        for name, raw in bucket.items():
            value = _num(raw)
            if value is not None:
                total[name] = total.get(name, 0.0) + value
    return total


def mean_ci(n: float, total: float, squares: float) -> dict:
    """Mean and normal-approximation 95% CI from count, sum and sum of squares."""
    if n <= 0:
        return {"n": 0, "mean": None, "lo": None, "hi": None}
    mean = total / n
    if n < 2:
        return {"n": int(n), "mean": mean, "lo": None, "hi": None}
    var = max(0.0, (squares - n * mean * mean) / (n - 1))  # max: float cancellation on constants
    half = Z95 * math.sqrt(var / n)
    return {"n": int(n), "mean": mean, "lo": mean - half, "hi": mean + half}


def _ratio(c: Mapping[str, float], num: str, den: str) -> float | None:
    d = c.get(den, 0.0)
    return c.get(num, 0.0) / d if d > 0 else None


def figures(counters: Mapping[str, float]) -> dict:
    """One version's counters (of a bucket or a merged span) -> the figures /ops shows."""
    c = counters
    out = {"reward": mean_ci(c.get("reward_n", 0.0), c.get("reward_sum", 0.0), c.get("reward_sq", 0.0))}
    out.update({name: _ratio(c, num, den) for name, (num, den) in SIGNAL_MIX.items()})
    final = sum(c.get("final_" + s, 0.0) for s in FINAL_STATES)
    out["final"] = {s: int(c.get("final_" + s, 0.0)) for s in FINAL_STATES}
    out["coverage"] = c.get("final_rewarded", 0.0) / final if final else None
    out["latency_s"] = _ratio(c, "latency_sum", "latency_n")
    out["replies"] = int(c.get("replies", 0.0))
    out["style"] = style_figures(c)
    return out


def series(buckets: list[tuple[int, Mapping[str, str | float]]], step_s: int) -> dict:
    """Buckets (start time, hash), oldest first -> column arrays for charts (None = no data).
    `overall` merges the versions of each bucket; events_per_s uses the step length."""
    times = [t for t, _ in buckets]
    parsed = [by_version(b) for _, b in buckets]
    names = sorted({v for p in parsed for v in p if v != ALL}, key=versions.sort_key)
    per_version = {}
    for v in names:
        rows = [figures(p.get(v, {})) for p in parsed]
        per_version[v] = {
            "mean": [r["reward"]["mean"] for r in rows], "lo": [r["reward"]["lo"] for r in rows],
            "hi": [r["reward"]["hi"] for r in rows], "n": [r["reward"]["n"] for r in rows]}
    overall_rows = [figures(merge({k: v for k, v in p.get(ver, {}).items()} for ver in p if ver != ALL))
                    for p in parsed]
    return {
        "t": times, "step_s": step_s, "versions": per_version,
        "signals": {name: [r[name] for r in overall_rows] for name in SIGNAL_MIX},
        "coverage": [r["coverage"] for r in overall_rows],
        "latency_s": [r["latency_s"] for r in overall_rows],
        "events_per_s": [p.get(ALL, {}).get("events", 0.0) / step_s for p in parsed],
        # gauges sampled by the monitor each tick (last sample of the bucket; None: no tick then)
        "pending": [p.get(ALL, {}).get("pending_depth") for p in parsed],
        "dead_letters": [p.get(ALL, {}).get("dead_letters_depth") for p in parsed],
        "chat": _chat_columns(parsed),
    }


def _chat_columns(parsed: list[dict]) -> dict:
    """Per bucket: chat tokens/s while busy and TTFT p95, for each learner state."""
    rows = [chat_figures(p.get(ALL, {})) for p in parsed]
    return {f"{figure}_{state}": [r[state][figure] for r in rows]
            for state in STATES for figure in ("tokens_per_s", "ttft_p95")}




version_key = versions.sort_key  # numbered versions in order, then names (base, unknown)


# ---------------------------------------------------------------- chat load by learner state



def chat_increments(seen: Mapping[str, float], now: Mapping[str, float]) -> dict[str, float]:
    """One server's cumulative chat counters (service/serving/load.py) as last folded and now ->
    bucket increments `chat_{counter}|*`. A counter that went down (cannot happen for one server
    id) counts from zero."""
    inc = {}
    for name, value in now.items():
        v = _num(value)
        if v is None:
            continue
        before = _num(seen.get(name)) or 0.0
        delta = v - before if v >= before else v
        if delta > 0:
            inc[field("chat_" + name, ALL)] = delta
    return inc


def histogram_quantile(cumulative: list[tuple[float, float]], total: float, q: float) -> float | None:
    """q-quantile from cumulative `le` bucket counts (linear inside a bucket, as Prometheus does);
    beyond the last bound: that bound. None without observations."""
    if total <= 0:
        return None
    rank, lo, below = q * total, 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            inside = count - below
            return lo + (bound - lo) * ((rank - below) / inside if inside > 0 else 1.0)
        lo, below = bound, count
    return cumulative[-1][0] if cumulative else None


def chat_figures(every: Mapping[str, float]) -> dict:
    """The chat load of a span (the `*` counters of merged buckets): per learner state tokens/s
    while busy, TTFT p95 and mean, and training/idle tokens/s."""
    out = {}
    for state in STATES:
        c = lambda name, state=state: every.get(f"chat_{name}_{state}", 0.0)
        busy, n = c("busy_s"), c("ttft_n")
        hist = [(b, c(f"ttft_le_{b:g}")) for b in TTFT_BUCKETS_S]
        out[state] = {"tokens": c("tokens"), "busy_s": busy, "replies": int(n),
                      "tokens_per_s": c("tokens") / busy if busy > 0 else None,
                      "ttft_p95": histogram_quantile(hist, n, 0.95), "ttft_mean": c("ttft_sum") / n if n else None}
    idle, train = out["idle"]["tokens_per_s"], out["training"]["tokens_per_s"]
    out["training_vs_idle"] = train / idle if idle and train is not None else None
    return out


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[float | None], lo: float = -1.0, hi: float = 1.0) -> str:
    """Unicode sparkline on a fixed [lo, hi] scale (rewards: -1..1); a gap is a space."""
    out = []
    for v in values:
        if v is None:
            out.append(" ")
            continue
        frac = (min(hi, max(lo, v)) - lo) / (hi - lo) if hi > lo else 0.5
        out.append(SPARKS[min(len(SPARKS) - 1, int(frac * len(SPARKS)))])
    return "".join(out)
