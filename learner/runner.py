"""One learner run: the lock around the stages of learner/run.py (prepare -> train -> judge ->
publish), which build the dataset, train, gate, publish or reject, and advance the cursor.

The lock is a Redis key set with NX PX to a fencing token (INCR of a counter), kept alive by a
heartbeat thread. The commit (registry.commit) re-checks the token atomically, so a run whose
lock expired -- paused too long, or its heartbeat died -- cannot publish, even if it does not
know it lost the lock. A run killed at any point leaves the registry and the cursor as they
were: nothing is written to Redis before that commit.
"""
from __future__ import annotations

import logging
import threading
import time

import redis

from core.archive import Archive
from core.keys import Keys
from core.redis_conn import RELEASE_LOCK, connect
from core.settings import LearnerSettings
from learner.chat_first import ChatFirst
from learner.config import TrainConfig, load_train_config
from learner.policy import forget
from learner.run import RunContext, RunOptions, RunResult, prepare
from learner.run_stages import judge, publish, train_stage
from worker.rewards.config import RewardConfig, load_reward_config

log = logging.getLogger(__name__)

# extend PX only while the key still holds our token; delete likewise
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


class LearnerLock:
    """Redis lock with a fencing token and a heartbeat."""

    def __init__(self, r: redis.Redis, keys: Keys, ttl_s: float):
        self.r, self.k, self.ttl_ms = r, keys, int(ttl_s * 1000)
        self.token: str | None = None
        self.lost = False   # set by the heartbeat when the lock is someone else's (or gone)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(RELEASE_LOCK)

    def acquire(self) -> bool:
        token = str(self.r.incr(self.k.learn_fence))
        if not self.r.set(self.k.learn_lock, token, nx=True, px=self.ttl_ms):
            return False
        self.token = token
        self._thread = threading.Thread(target=self._beat, name="learner-lock-heartbeat", daemon=True)
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self._renew(keys=[self.k.learn_lock], args=[self.token, self.ttl_ms]):
                    log.warning("learner lock lost (token %s); this run stops and will not publish", self.token)
                    self.lost = True
                    return
            except redis.RedisError as exc:  # transient: the next beat retries; the commit re-checks anyway
                log.warning("learner lock heartbeat failed: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self.token:
            self._release(keys=[self.k.learn_lock], args=[self.token])


def held(r: redis.Redis, keys: Keys) -> bool:
    return bool(r.exists(keys.learn_lock))


def run_once(settings: LearnerSettings, cfg: TrainConfig | None = None, reward_cfg: RewardConfig | None = None, *,
             dry_run: bool = False, progress: bool = True, by: str = "learner", on_trained=None) -> RunResult:
    """One learner run. `on_trained(model)` is called between training and the gate (diagnostics
    and tests, e.g. to corrupt weights)."""
    if not settings.redis_url:
        raise ValueError("run_once needs settings.redis_url (REWARDLOOP_REDIS_URL); `rewardloop train` "
                         "starts an embedded Redis when it is unset")
    cfg = cfg or load_train_config(settings.train_config)
    reward_cfg = reward_cfg or load_reward_config(settings.reward_config)
    r = connect(settings.redis_url)
    keys = Keys(settings.prefix)
    lock = LearnerLock(r, keys, settings.learn_lock_ttl_s)
    try:
        if not lock.acquire():
            return RunResult("busy", reason="another learner run holds the lock")
        ctx = RunContext(settings=settings, cfg=cfg, reward_cfg=reward_cfg, r=r, keys=keys, lock=lock,
                         options=RunOptions(dry_run=dry_run, progress=progress, by=by, on_trained=on_trained),
                         chat=ChatFirst.for_run(r, keys, settings), archive=Archive(settings.archive_location))
        result = _stages(ctx)
        if not dry_run:
            r.hset(keys.learn_last_run, mapping={"state": result.state, "version": result.version or "",
                                                 "reason": result.reason, "finished_at": time.time()})
        return result
    finally:
        lock.release()
        r.close()


def _stages(ctx: RunContext) -> RunResult:
    """prepare -> train -> judge -> publish; the policy's adapter is taken out whatever happens."""
    try:
        if ctx.chat is not None:
            ctx.chat.begin()
        result = prepare(ctx) or train_stage(ctx)
        if result is not None:
            return result
        judge(ctx)
        return publish(ctx)
    finally:
        if ctx.chat is not None:
            ctx.chat.end()
        if ctx.policy is not None:
            try:
                ctx.policy.release()
            except Exception:   # the cached model may be half-changed: load it afresh next run
                log.exception("could not take the run's adapter out of the cached model; dropping the cache")
                forget(ctx.settings.model, ctx.settings.models_dir, ctx.settings.device)
