"""The training set of one learner run, built from final rewards not used yet.

Input (written by the reward workers and the server): the `rewards` stream (one entry per final
reward), the `pairs` stream (preference pairs) and the reply hashes (prompt ids, reply ids,
behavior log-probs, sampling params, adapter version). The `learn:cursor` key holds the id of the
last reward entry a run consumed; it moves only when a run publishes or is rejected (runner.py),
so a crashed or skipped run sees the same samples again.

Replay window: a run trains on the newest `replay_window` final rewards, not only the new ones
(entries up to the cursor are *replayed*: a rejected run's samples are not lost, and a small
run is not decided by its few new rewards alone). Each sample keeps the behavior log-probs of
the version that served it; the policy gradient's clipped, truncated per-token ratios
(TrainConfig.pg_clip_eps, pg_ratio_cap) and the staleness cap absorb the version gap.
Replies the users gave no signal on are `unscored` when RewardConfig.no_signal_policy =
'model': the runner rewards them with the reward model (learner/reward_model.py), if trusted.

Filters, in order: opted-out or forgotten users, unknown states, missing or malformed replies,
samples from adapter versions too old (staleness in versions), then each user's share of the
batch is capped (worker.rewards.batches.cap_user_share) so no single user can steer the model. A
deterministic share of the rest is held out for the gate (never a reranked reply: its logged
log-probs are not the propensity of the best-of-N choice).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core import records, versions
from core.keys import Keys
from core.sampling import SamplingParams
from learner.config import TrainConfig
from worker.rewards.batches import cap_user_share
from worker.rewards.config import RewardConfig

if TYPE_CHECKING:   # annotations only: learner.train (and the GPU check) import this module without Redis
    import redis

FINAL_STATES = ("rewarded", "defaulted")
UNSCORED = "unscored"  # final, no user signal, to be rewarded by the reward model


@dataclass(frozen=True)
class Sample:
    reply_id: str
    user_id: str
    prompt_ids: list[int]
    reply_ids: list[int]
    behavior_logp: list[float]  # one per reply token, under the sampling distribution used
    reward: float
    adapter_version: str  # "base" or "1", "2", ...
    params: SamplingParams
    stream_id: str = ""
    # Chosen among REWARDLOOP_RERANK_N candidates by the reward model: behavior_logp is the sampled
    # tokens' own, not the propensity of the choice, so it never goes into the gate's estimate.
    reranked: bool = False
    # Drawn by the learner from the parent adapter and rewarded by the reward model
    # (learner/onpolicy.py): trains, never held out, no user behind it.
    onpolicy: bool = False

    @property
    def greedy(self) -> bool:
        """Greedy replies have behavior log-prob 0 (a point mass): no importance ratio exists."""
        return self.params.greedy


@dataclass(frozen=True)
class Pair:
    chosen: Sample
    rejected: Sample
    source: str


@dataclass
class Dataset:
    train: list[Sample]
    holdout: list[Sample]
    pairs: list[Pair]
    last_id: str | None  # newest reward entry read: the cursor after a publish or reject
    last_pair_id: str | None
    read: int = 0  # new reward entries read (after the cursor)
    replayed: int = 0  # of the training samples, how many came from before the cursor
    unscored: list[Sample] = field(default_factory=list)  # no user signal: reward from the reward model
    dropped: Counter = field(default_factory=Counter)  # reason -> count

    def stats(self) -> dict:
        rewards = [s.reward for s in self.train]
        return {"read": self.read, "train": len(self.train), "holdout": len(self.holdout),
                "replayed": self.replayed, "unscored": len(self.unscored),
                "onpolicy": sum(s.onpolicy for s in self.train),
                "pairs": len(self.pairs), "users": len({s.user_id for s in self.train if not s.onpolicy}),
                "dropped": dict(self.dropped),
                "reward_mean": sum(rewards) / len(rewards) if rewards else None}


version_number = versions.number  # 'base' -> 0, '3' -> 3, anything else -> None


def read_cursor(r: redis.Redis, keys: Keys) -> str | None:
    return r.get(keys.learn_cursor)


def count_new(r: redis.Redis, keys: Keys, limit: int) -> int:
    """Reward entries after the cursor, counted up to `limit` (cheap trigger check)."""
    start = _after(read_cursor(r, keys))
    return len(r.xrange(keys.rewards, min=start, max="+", count=limit))


def _after(cursor: str | None) -> str:
    return f"({cursor}" if cursor else "-"


def _user_excluded(r: redis.Redis, keys: Keys, user_id: str, cache: dict) -> bool:
    if user_id not in cache:
        flags = r.hmget(keys.user(user_id), "opt_out", "forgotten")
        cache[user_id] = any(f not in (None, "", "0") for f in flags)
    return cache[user_id]


def load_reply(r: redis.Redis, keys: Keys, reply_id: str, max_tokens: int) -> dict | None:
    """The decoded reply hash, or None when it is missing or malformed."""
    h = r.hgetall(keys.reply(reply_id))
    if not h or "token_ids" not in h or "logprobs" not in h or "prompt_ids" not in h:
        return None
    try:
        reply_ids = [int(t) for t in json.loads(h["token_ids"])]
        logps = [float(x) for x in json.loads(h["logprobs"])]
        prompt_ids = [int(t) for t in json.loads(h["prompt_ids"])]
        params = records.sampling_params(json.loads(h.get("params") or "{}"))
    except (ValueError, TypeError):
        return None
    if not reply_ids or not prompt_ids or len(reply_ids) != len(logps) or not all(map(math.isfinite, logps)):
        return None
    return {"prompt_ids": prompt_ids, "reply_ids": reply_ids[:max_tokens], "logprobs": logps[:max_tokens],
            "params": params, "reranked": _reranked(h.get("rerank")), "adapter_version": h.get("adapter_version", "base"),
            "user_id": h.get("user_id", ""), "opt_out": h.get("opt_out", "0")}


def _reranked(raw: str | None) -> bool:
    try:
        rerank = json.loads(raw) if raw else None
    except ValueError:
        return True   # a rerank field that does not decode: do not trust the propensities
    return isinstance(rerank, dict) and (rerank.get("n") or 1) > 1


def _in_holdout(reply_id: str, share: float, seed: int) -> bool:
    """Deterministic split: the same reply is always on the same side for one seed."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{reply_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < share


def build_dataset(r: redis.Redis, keys: Keys, cfg: TrainConfig, reward_cfg: RewardConfig,
                  newest_version: int, with_pairs: bool = False) -> Dataset:
    """Reward entries after the cursor (at most cfg.max_samples), plus up to cfg.replay_window
    newest ones before it, turned into samples."""
    cursor = read_cursor(r, keys)
    entries = r.xrange(keys.rewards, min=_after(cursor), max="+", count=cfg.max_samples)
    old = []
    room = cfg.replay_window - len(entries)
    if cursor and room > 0:
        old = list(reversed(r.xrevrange(keys.rewards, max=cursor, min="-", count=room)))
    new_ids = {sid for sid, _ in entries}
    dropped: Counter = Counter()
    users: dict[str, bool] = {}
    samples: list[Sample] = []
    seen: set[str] = set()
    unscored: list[Sample] = []
    for stream_id, e in old + entries:
        rid, uid = e.get("reply_id", ""), e.get("user_id", "")
        if e.get("state") not in FINAL_STATES and e.get("state") != UNSCORED:
            dropped["not_final"] += 1
            continue
        if rid in seen:  # a re-finalized reply counts once (the first final reward wins)
            dropped["duplicate"] += 1
            continue
        if e.get("opt_out", "0") not in ("", "0") or _user_excluded(r, keys, uid, users):
            dropped["opt_out"] += 1
            continue
        try:
            reward = 0.0 if e.get("state") == UNSCORED else float(e.get("reward", "nan"))
        except ValueError:
            reward = float("nan")
        if not math.isfinite(reward):
            dropped["bad_reward"] += 1
            continue
        version = version_number(e.get("adapter_version"))
        if version is None:
            dropped["unknown_version"] += 1
            continue
        if newest_version - version > cfg.max_staleness:
            dropped["stale"] += 1
            continue
        reply = load_reply(r, keys, rid, cfg.max_reply_tokens)
        if reply is None:
            dropped["missing_reply"] += 1
            continue
        if reply["opt_out"] not in ("", "0"):
            dropped["opt_out"] += 1
            continue
        seen.add(rid)
        sample = Sample(reply_id=rid, user_id=uid or reply["user_id"], prompt_ids=reply["prompt_ids"],
                        reply_ids=reply["reply_ids"], behavior_logp=reply["logprobs"], reward=reward,
                        adapter_version=str(e.get("adapter_version") or reply["adapter_version"]),
                        params=reply["params"], stream_id=stream_id, reranked=reply["reranked"])
        (unscored if e.get("state") == UNSCORED else samples).append(sample)
    capped = cap_user_share(samples, lambda s: s.user_id, reward_cfg.max_user_share) if samples else []
    dropped["user_share_cap"] += len(samples) - len(capped)
    # the gate's held-out replies need their true propensities: reranked ones train instead
    held = [not s.reranked and _in_holdout(s.reply_id, cfg.holdout_share, cfg.seed) for s in capped]
    train = [s for s, h in zip(capped, held) if not h]
    holdout = [s for s, h in zip(capped, held) if h]
    pairs, last_pair = _read_pairs(r, keys, cfg, users) if with_pairs else ([], None)
    unscored = [s for s in unscored if not _in_holdout(s.reply_id, cfg.holdout_share, cfg.seed)]
    return Dataset(train=train, holdout=holdout, pairs=pairs, read=len(entries), dropped=+dropped,
                   last_id=entries[-1][0] if entries else None, last_pair_id=last_pair,
                   replayed=sum(s.stream_id not in new_ids for s in train), unscored=unscored)


def _read_pairs(r: redis.Redis, keys: Keys, cfg: TrainConfig, users: dict) -> tuple[list[Pair], str | None]:
    """Preference pairs after the pairs cursor whose two replies answer the same prompt."""
    entries = r.xrange(keys.pairs, min=_after(r.get(keys.learn_pairs_cursor)), max="+", count=cfg.max_samples)
    pairs = []
    for _, e in entries:
        if _user_excluded(r, keys, e.get("user_id", ""), users):
            continue
        sides = []
        for rid in (e.get("chosen_id", ""), e.get("rejected_id", "")):
            rep = load_reply(r, keys, rid, cfg.max_reply_tokens)
            sides.append(None if rep is None else Sample(
                reply_id=rid, user_id=rep["user_id"], prompt_ids=rep["prompt_ids"], reply_ids=rep["reply_ids"],
                behavior_logp=rep["logprobs"], reward=0.0, adapter_version=rep["adapter_version"],
                params=rep["params"]))
        if None in sides or sides[0].prompt_ids != sides[1].prompt_ids:
            continue
        pairs.append(Pair(chosen=sides[0], rejected=sides[1], source=e.get("source", "")))
    return pairs, entries[-1][0] if entries else None
