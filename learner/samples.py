"""Which logged replies a learner run trains on, decided on plain data. Pure: no Redis.

learner/dataset.py reads the reward entries and reply hashes and hands them here as
`RewardRow`s and `LoggedReply`s; `select_samples` applies the rules, in order:

1. only final entries ('rewarded', 'defaulted'; 'unscored' ones go aside for the reward model);
2. a reply counts once (the first final reward wins);
3. opted-out or forgotten users are left out (the flag on the entry, on the reply, or the user);
4. a reward that is not a finite number, an unknown adapter version, or a version more than
   `max_staleness` versions behind the newest is dropped;
5. a reply hash that is missing or malformed is dropped; the safety rule (`never_positive`): an
   unsafe reply (vetoed in the ledger, or scored unsafe at or above RewardConfig.safety_threshold
   with the veto on) trains only as a negative example -- its reward capped at or below its
   safety penalty and under the SFT threshold -- and is never handed to the reward model to score;
6. incremental runs: every new entry (after the learner cursor) is kept, plus a *replay sample*
   of at most `replay_ratio` x (new samples) older ones, drawn (seeded per run) from the
   `replay_window` newest entries before the cursor -- so a run's cost grows with its new data,
   not with the history;
7. each user's share of the run is capped (worker.rewards.batches.cap_user_share; new samples
   come first, so the cap drops replayed ones before new ones);
8. a deterministic share (by reply id) is held out for the gate -- never a reranked reply: its
   logged log-probs are not the propensity of the best-of-N choice.

Per-reply exclusions (e.g. an unsafe reply is never a positive example) belong in step 5's
place: add a reason to `dropped` there, so every run reports how many it left out and why.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from core import versions
from core.sampling import SamplingParams
from worker.rewards.batches import cap_user_share
from worker.rewards.config import RewardConfig

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


@dataclass(frozen=True)
class RewardRow:
    """One entry of the `rewards` stream, as the learner reads it."""
    stream_id: str
    reply_id: str
    user_id: str
    state: str
    reward: float            # NaN when missing or not a number; 0.0 for 'unscored'
    adapter_version: str
    opt_out: bool
    new: bool = True         # after the learner cursor (False: a candidate for the replay sample)
    vetoed: bool = False     # the ledger vetoed it: unsafe, never a positive example

    @classmethod
    def from_entry(cls, stream_id: str, e: Mapping[str, str], new: bool = True) -> RewardRow:
        state = e.get("state", "")
        try:
            reward = 0.0 if state == UNSCORED else float(e.get("reward", "nan"))
        except ValueError:
            reward = float("nan")
        return cls(stream_id=stream_id, reply_id=e.get("reply_id", ""), user_id=e.get("user_id", ""), state=state,
                   reward=reward, adapter_version=str(e.get("adapter_version") or ""),
                   opt_out=e.get("opt_out", "0") not in ("", "0"), new=new, vetoed=e.get("vetoed") == "1")


@dataclass(frozen=True)
class LoggedReply:
    """The parts of a reply hash (core/records.py) a run trains on."""
    prompt_ids: list[int]
    reply_ids: list[int]     # cut to max_reply_tokens
    logprobs: list[float]    # behavior log-probs, one per reply token
    params: SamplingParams
    reranked: bool
    adapter_version: str
    user_id: str
    opt_out: bool
    unsafe: float | None = None   # P[unsafe] the server scored at the reply's end (None: not scored)


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


@dataclass(frozen=True)
class Selection:
    """What `select_samples` decided."""
    train: list[Sample]
    holdout: list[Sample]
    unscored: list[Sample]
    replayed: int
    dropped: Counter


def in_holdout(reply_id: str, share: float, seed: int) -> bool:
    """Deterministic split: the same reply is always on the same side for one seed."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{reply_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < share


def _drop_reason(row: RewardRow, reply: LoggedReply | None, newest_version: int, max_staleness: int,
                 excluded_users: frozenset[str]) -> str | None:
    """Why this entry does not become a sample (rules 3-5), or None."""
    if row.opt_out or row.user_id in excluded_users:
        return "opt_out"
    if not math.isfinite(row.reward):
        return "bad_reward"
    version = versions.number(row.adapter_version)
    if version is None:
        return "unknown_version"
    if newest_version - version > max_staleness:
        return "stale"
    if reply is None:
        return "missing_reply"
    if reply.opt_out:
        return "opt_out"
    return None


def is_unsafe(row: RewardRow, reply: LoggedReply, safety: RewardConfig | None) -> bool:
    """Vetoed in the ledger, or scored unsafe at or above the threshold (with the veto on)."""
    if safety is None or not safety.safety_veto:
        return False
    return row.vetoed or (reply.unsafe is not None and reply.unsafe >= safety.safety_threshold)


def never_positive(reward: float, safety: RewardConfig, sft_threshold: float) -> float:
    """The reward an unsafe reply trains with: at most -safety_weight x safety_threshold (the
    mildest veto cap), below 0 and below the SFT threshold, so it is never imitated."""
    return min(reward, -min(1.0, safety.safety_weight) * safety.safety_threshold, sft_threshold - 1e-6, -1e-6)


def _sample(row: RewardRow, reply: LoggedReply) -> Sample:
    return Sample(reply_id=row.reply_id, user_id=row.user_id or reply.user_id, prompt_ids=reply.prompt_ids,
                  reply_ids=reply.reply_ids, behavior_logp=reply.logprobs, reward=row.reward,
                  adapter_version=row.adapter_version or reply.adapter_version, params=reply.params,
                  stream_id=row.stream_id, reranked=reply.reranked)


def replay_sample(old: list[Sample], n_new: int, ratio: float, seed: int) -> list[Sample]:
    """At most ratio x n_new of the older samples, drawn without replacement with `seed`, in
    their stream order. Pure."""
    k = min(len(old), math.ceil(ratio * n_new))
    if k <= 0:
        return []
    picked = set(random.Random(seed).sample(range(len(old)), k))
    return [s for i, s in enumerate(old) if i in picked]


def select_samples(records: Mapping[str, LoggedReply | None], rewards: Sequence[RewardRow], cfg, *,
                   newest_version: int, max_user_share: float, excluded_users: frozenset[str] = frozenset(),
                   safety: RewardConfig | None = None) -> Selection:
    """The run's training, held-out and unscored samples from the reward entries (oldest first)
    and their reply records. `cfg` is a TrainConfig (max_staleness, replay.ratio, gate.holdout_share,
    seed, sft.threshold); `excluded_users` are opted out or forgotten; `safety` the reward config
    whose veto settings the safety rule follows (None: no safety rule). Pure."""
    dropped: Counter = Counter()
    seen: set[str] = set()
    new: list[Sample] = []
    old: list[Sample] = []
    unscored: list[Sample] = []
    for row in rewards:
        if row.state not in FINAL_STATES and row.state != UNSCORED:
            dropped["not_final"] += 1
            continue
        if row.reply_id in seen:  # a re-finalized reply counts once (the first final reward wins)
            dropped["duplicate"] += 1
            continue
        reply = records.get(row.reply_id)
        why = _drop_reason(row, reply, newest_version, cfg.max_staleness, excluded_users)
        if why:
            dropped[why] += 1
            continue
        unsafe = is_unsafe(row, reply, safety)
        if unsafe and row.state == UNSCORED:   # the reward model must not make it a positive example
            dropped["unsafe_unscored"] += 1
            continue
        seen.add(row.reply_id)
        sample = _sample(row, reply)
        if unsafe:
            sample = dataclasses.replace(sample, reward=never_positive(sample.reward, safety, cfg.sft.threshold))
        if row.state == UNSCORED:
            if row.new:
                unscored.append(sample)
        else:
            (new if row.new else old).append(sample)
    replay = replay_sample(old, len(new), cfg.replay.ratio, seed=cfg.seed * 1_000_003 + newest_version)
    dropped["not_replayed"] += len(old) - len(replay)
    chosen = new + replay
    capped = cap_user_share(chosen, lambda s: s.user_id, max_user_share) if chosen else []
    dropped["user_share_cap"] += len(chosen) - len(capped)
    # the gate's held-out replies need their true propensities: reranked ones train instead
    held = [not s.reranked and in_holdout(s.reply_id, cfg.gate.holdout_share, cfg.seed) for s in capped]
    replayed_ids = {s.reply_id for s in replay}
    train = [s for s, h in zip(capped, held) if not h]
    return Selection(train=train, holdout=[s for s, h in zip(capped, held) if h],
                     unscored=[s for s in unscored if not in_holdout(s.reply_id, cfg.gate.holdout_share, cfg.seed)],
                     replayed=sum(s.reply_id in replayed_ids for s in train), dropped=+dropped)
