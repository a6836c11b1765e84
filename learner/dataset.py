"""The training set of one learner run: the reads of the history that feed learner/samples.py.

Input (written by the reward workers and the server): the `rewards` stream (one entry per final
reward), the `pairs` stream (preference pairs) and the reply hashes (prompt ids, reply ids,
behavior log-probs, sampling params, adapter version). The `learn:cursor` key holds the id of the
last reward entry a run consumed; it moves only when a run publishes or is rejected (runner.py),
so a crashed or skipped run sees the same samples again.

A run reads the entries after the cursor (at most `max_samples`) and the `replay_window` newest
ones before it (the pool its replay sample is drawn from), the reply hashes of those entries and
the users' opt-out flags; which of them train is decided on plain data by
`learner.samples.select_samples` (the rules are listed there). Every read of the history is in
this module and goes through core.history.History: Redis first, then the Parquet archive
(REWARDLOOP_ARCHIVE_URL), so a replay window that reaches back past what Redis still holds
reads the same entries, replies and log-probs it would have read from Redis.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from core import records, versions
from core.history import History
from core.keys import Keys
from learner.config import TrainConfig
from learner.samples import (  # the sample types live in samples.py; re-exported here
    FINAL_STATES,
    UNSCORED,
    Dataset,
    LoggedReply,
    Pair,
    RewardRow,
    Sample,
    in_holdout,
    select_samples,
)
from worker.rewards.config import RewardConfig

if TYPE_CHECKING:   # annotations only: learner.train (and the GPU check) import this module without Redis
    import redis

    from core.archive import Archive

version_number = versions.number  # 'base' -> 0, '3' -> 3, anything else -> None
_in_holdout = in_holdout  # the older name, kept for callers


def read_cursor(r: redis.Redis, keys: Keys) -> str | None:
    return r.get(keys.learn_cursor)


def count_new(r: redis.Redis, keys: Keys, limit: int, archive: Archive | None = None) -> int:
    """Reward entries after the cursor, counted up to `limit` (cheap trigger check)."""
    return History(r, keys, archive).count_rewards_after(read_cursor(r, keys), limit)


def _after(cursor: str | None) -> str:
    return f"({cursor}" if cursor else "-"


def parse_reply(h: dict, max_tokens: int) -> LoggedReply | None:
    """A stored reply hash -> LoggedReply, or None when it is missing or malformed."""
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
    return LoggedReply(prompt_ids=prompt_ids, reply_ids=reply_ids[:max_tokens], logprobs=logps[:max_tokens],
                       params=params, reranked=_reranked(h.get("rerank")),
                       adapter_version=h.get("adapter_version", "base"), user_id=h.get("user_id", ""),
                       opt_out=h.get("opt_out", "0") not in ("", "0"), unsafe=_unsafe_level(h.get("quality")))


def _unsafe_level(raw: str | None) -> float | None:
    """P[unsafe] the server stored with the reply (None: not scored, or not readable)."""
    try:
        level = float((json.loads(raw) or {}).get("unsafe")) if raw else None
    except (ValueError, TypeError, AttributeError):
        return None
    return level if level is not None and 0.0 <= level <= 1.0 else None


def load_reply(h: History, reply_id: str, max_tokens: int) -> LoggedReply | None:
    """One reply record, or None when it is missing or malformed."""
    return load_replies(h, [reply_id], max_tokens).get(reply_id)


def load_replies(h: History, reply_ids: Iterable[str], max_tokens: int) -> dict[str, LoggedReply | None]:
    """Reply records by id (Redis in one pipelined round trip, then the archive for the rest)."""
    ids = list(dict.fromkeys(reply_ids))
    found = h.replies(ids)
    return {rid: parse_reply(found[rid].to_redis(), max_tokens) if rid in found else None for rid in ids}


def _reranked(raw: str | None) -> bool:
    try:
        rerank = json.loads(raw) if raw else None
    except ValueError:
        return True   # a rerank field that does not decode: do not trust the propensities
    return isinstance(rerank, dict) and (rerank.get("n") or 1) > 1


def excluded_users(r: redis.Redis, keys: Keys, user_ids: Iterable[str]) -> frozenset[str]:
    """The users among `user_ids` who opted out or were forgotten (their user hash's flags)."""
    ids = sorted({u for u in user_ids if u})
    with r.pipeline(transaction=False) as p:
        for uid in ids:
            p.hmget(keys.user(uid), "opt_out", "forgotten")
        flags = p.execute()
    return frozenset(uid for uid, f in zip(ids, flags) if any(v not in (None, "", "0") for v in f))


def read_rewards(h: History, cfg: TrainConfig) -> list[RewardRow]:
    """The replay pool (the `replay_window` newest entries up to the cursor, new=False), then the
    entries after the cursor (at most cfg.max_samples), oldest first."""
    cursor = read_cursor(h.r, h.k)
    entries = h.rewards(after=cursor, count=cfg.max_samples)
    old = []
    if cursor and cfg.replay.window > 0:
        old = h.rewards(upto=cursor, count=cfg.replay.window, newest=True)
    return ([RewardRow.from_entry(e.stream_id, e.to_redis(), new=False) for e in old]
            + [RewardRow.from_entry(e.stream_id, e.to_redis(), new=True) for e in entries])


def build_dataset(r: redis.Redis, keys: Keys, cfg: TrainConfig, reward_cfg: RewardConfig,
                  newest_version: int, *, with_pairs: bool = False, archive: Archive | None = None) -> Dataset:
    """New reward entries plus a replay sample of older ones, turned into samples (from Redis
    and, with `archive`, the archive behind it)."""
    h = History(r, keys, archive)
    rows = read_rewards(h, cfg)
    wanted = [row.reply_id for row in rows if row.state in FINAL_STATES or row.state == UNSCORED]
    replies = load_replies(h, wanted, cfg.max_reply_tokens)
    users = excluded_users(r, keys, [row.user_id for row in rows])
    chosen = select_samples(replies, rows, cfg, newest_version=newest_version,
                            max_user_share=reward_cfg.max_user_share, excluded_users=users, safety=reward_cfg)
    new = [row for row in rows if row.new]
    pairs, last_pair = _read_pairs(h, cfg, reward_cfg, chosen.dropped) if with_pairs else ([], None)
    return Dataset(train=chosen.train, holdout=chosen.holdout, pairs=pairs, read=len(new), dropped=chosen.dropped,
                   last_id=new[-1].stream_id if new else None, last_pair_id=last_pair,
                   replayed=chosen.replayed, unscored=chosen.unscored)


def _read_pairs(h: History, cfg: TrainConfig, reward_cfg: RewardConfig, dropped) -> tuple[list[Pair], str | None]:
    """Preference pairs after the pairs cursor whose two replies answer the same prompt, and whose
    chosen side is not unsafe (the safety rule of learner/samples.py; counted in `dropped`)."""
    entries = h.pairs(after=h.r.get(h.k.learn_pairs_cursor), count=cfg.max_samples)
    gone = excluded_users(h.r, h.k, [e.user_id or "" for e in entries])
    replies = load_replies(h, [rid or "" for e in entries for rid in (e.chosen_id, e.rejected_id)],
                           cfg.max_reply_tokens)
    pairs = []
    for e in entries:
        if (e.user_id or "") in gone:
            continue
        sides = []
        for rid in (e.chosen_id or "", e.rejected_id or ""):
            rep = replies.get(rid)
            sides.append(None if rep is None else Sample(
                reply_id=rid, user_id=rep.user_id, prompt_ids=rep.prompt_ids, reply_ids=rep.reply_ids,
                behavior_logp=rep.logprobs, reward=0.0, adapter_version=rep.adapter_version, params=rep.params))
        if None in sides or sides[0].prompt_ids != sides[1].prompt_ids:
            continue
        if _unsafe_chosen(h, e.chosen_id or "", replies[e.chosen_id or ""], reward_cfg):
            dropped["unsafe_chosen_pair"] += 1
            continue
        pairs.append(Pair(chosen=sides[0], rejected=sides[1], source=e.source or ""))
    return pairs, entries[-1].stream_id if entries else None


def _unsafe_chosen(h: History, reply_id: str, reply: LoggedReply, reward_cfg: RewardConfig) -> bool:
    """An unsafe reply is never the chosen side of a pair (scored unsafe, or vetoed in its ledger entry)."""
    if not reward_cfg.safety_veto:
        return False
    if reply.unsafe is not None and reply.unsafe >= reward_cfg.safety_threshold:
        return True
    return h.r.hget(h.k.reward(reply_id), "vetoed") == "1"
