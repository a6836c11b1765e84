"""A learner run whose replay window lies mostly in the archive trains on exactly the samples it
would have had from Redis: same reply ids, token ids and behavior log-probs, same losses (tiny
model, real Redis, the real archive run)."""
from __future__ import annotations

import dataclasses
import time

import pytest

from core.archive import Archive
from core.keys import Keys
from core.records import FinalReward, ReplyRecord, RewardEntry
from core.settings import WorkerSettings
from learner.config import GateSettings, ReplaySettings, TrainConfig
from learner.dataset import build_dataset
from learner.runner import run_once
from tests.support.learner import NO_PROBE, QUICK_STEP, favoured
from worker.archive.run import run_archive
from worker.rewards.config import RewardConfig

pytestmark = pytest.mark.integration

CFG = TrainConfig(safety=NO_PROBE, minibatch_size=8, gate=GateSettings(holdout_share=0.25, cf_margin=2.0, cf_min_ess=1.0),
                  replay=ReplaySettings(window=64, ratio=2.0), min_samples=4, step=QUICK_STEP)
ALL_USERS = RewardConfig(max_user_share=1.0)


def log_as_served(r, keys: Keys, items, old_until: int, now: float) -> None:
    """Each logged reply in a session of its own with a final reward; the first `old_until` ended
    three hours before `now` (finished: the archive takes them), the rest at `now`."""
    for i, item in enumerate(items):
        at = now - 3 * 3600 + i if i < old_until else now + i / 1000
        sid, reward = f"s_{item.reply_id}", 1.0 if favoured(item) else -1.0
        rec = ReplyRecord(reply_id=item.reply_id, user_id=item.user_id, session_id=sid, turn=0,
                          prompt_ids=item.prompt_ids, token_ids=item.token_ids,
                          logprobs=[round(x, 6) for x in item.logprobs], params=item.params.to_dict(),
                          adapter_version="base", finish_reason="length", n_tokens=len(item.token_ids),
                          ended_at=at, opt_out=0, text="x")
        r.hset(keys.reply(item.reply_id), mapping=rec.to_redis())
        r.rpush(keys.session(sid), item.reply_id)
        r.rpush(keys.session_replies(sid), item.reply_id)
        r.hset(keys.session_meta(sid), mapping={"user_id": item.user_id, "created": repr(at), "last_active": repr(at)})
        r.zadd(keys.sessions, {sid: at})
        entry = RewardEntry(reply_id=item.reply_id, state="rewarded", user_id=item.user_id, session_id=sid,
                            adapter_version="base", reward=reward, components={"thumbs": reward}, opt_out=0)
        r.hset(keys.reward(item.reply_id), mapping=entry.to_redis())
        final = FinalReward(reply_id=item.reply_id, user_id=item.user_id, session_id=sid, adapter_version="base",
                            state="rewarded", reward=reward, config_hash="test", user_weight=1.0, opt_out=0,
                            finalized_at=at, components="thumbs")
        r.xadd(keys.rewards, final.to_redis(), id=f"{int(at * 1000)}-0")  # the same ids in both deployments


def _samples(data):
    return [[(s.reply_id, s.prompt_ids, s.reply_ids, s.behavior_logp, s.reward, s.stream_id) for s in part]
            for part in (data.train, data.holdout)]


def test_replay_from_the_archive_trains_on_the_same_samples(logged, settings, rdb, tmp_path):
    redis_only = settings
    archived = dataclasses.replace(settings, prefix=settings.prefix + "b:", data_dir=tmp_path / "b")
    now = time.time()
    for s in (redis_only, archived):
        keys = Keys(s.prefix)
        log_as_served(rdb, keys, logged, old_until=20, now=now)
        rdb.set(keys.learn_cursor, rdb.xrange(keys.rewards)[15][0])  # 16 replayable, 8 new (4 of them archived)
    kb = Keys(archived.prefix)
    worker = WorkerSettings(redis_url=archived.redis_url, prefix=archived.prefix, data_dir=archived.data_dir,
                            hot_session_idle_s=3600, worker_abandon_idle_s=1800, hot_stream_s=3600)
    moved = run_archive(rdb, kb, worker)["moved"]
    assert moved["sessions"] == 20 and moved["entries"]["rewards"] == 20
    assert rdb.xlen(kb.rewards) == 4 and not rdb.exists(kb.reply(logged[0].reply_id))  # mostly in the archive

    from_redis = build_dataset(rdb, Keys(redis_only.prefix), CFG, ALL_USERS, newest_version=0)
    from_archive = build_dataset(rdb, kb, CFG, ALL_USERS, newest_version=0,
                                 archive=Archive(archived.archive_location))
    assert from_redis.replayed > 0 and len(from_redis.train) >= 8
    assert _samples(from_archive) == _samples(from_redis)  # same ids, tokens, log-probs, rewards
    assert from_archive.last_id == from_redis.last_id and from_archive.stats() == from_redis.stats()

    runs = [run_once(s, CFG, ALL_USERS, dry_run=True, progress=False) for s in (redis_only, archived)]
    assert runs[0].state == runs[1].state == "dry_run"
    a, b = (r.stats for r in runs)
    assert a["dataset"] == b["dataset"] and a["stream_range"] == b["stream_range"]
    assert a["training"]["steps"] == b["training"]["steps"] > 0
    assert a["training"]["first"] == b["training"]["first"] and a["training"]["last"] == b["training"]["last"]
