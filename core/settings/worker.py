"""The reward workers' and beat's settings (`rewardloop worker`, `rewardloop beat`): ticks,
retries, the drift monitor, the hot window and the archive."""
from __future__ import annotations

from dataclasses import dataclass

from core.config_fields import ConfigError, setting
from core.settings.common import CommonSettings


@dataclass(frozen=True)
class WorkerSettings(CommonSettings):
    """Reward workers and beat (`rewardloop worker`, `rewardloop beat`): ticks, retries, the drift monitor."""
    update_every_s: int = setting(300, "REWARDLOOP_UPDATE_EVERY: seconds between learner-trigger checks.", ge=1)
    worker_events_every_s: float = setting(
        1.0, "REWARDLOOP_WORKER_EVENTS_EVERY_S: seconds between beat's 'process new feedback events' ticks. Each "
        "reward-worker process reads events as they arrive (a blocking consumer); the tick restarts a consumer "
        "that died, and processes events where none runs.", gt=0)
    worker_finalize_every_s: float = setting(
        5.0, "REWARDLOOP_WORKER_FINALIZE_EVERY_S: seconds between beat's 'finalize due rewards' tasks.", gt=0)
    worker_abandon_every_s: float = setting(
        30.0, "REWARDLOOP_WORKER_ABANDON_EVERY_S: seconds between beat's 'find abandoned sessions' tasks.", gt=0)
    worker_abandon_idle_s: float = setting(
        1800.0, "REWARDLOOP_WORKER_ABANDON_IDLE_S: a session idle this long has ended; its last reply, if the user did "
        "nothing with it, gets an 'abandon' event.", gt=0)
    worker_reclaim_every_s: float = setting(
        15.0, "REWARDLOOP_WORKER_RECLAIM_EVERY_S: seconds between beat's 'reclaim stale pending events' tasks.", gt=0)
    worker_reclaim_idle_s: float = setting(
        60.0, "REWARDLOOP_WORKER_RECLAIM_IDLE_S: an event delivered but not acked for this long (its worker died or "
        "failed on it) is taken over by another worker.", gt=0)
    worker_max_deliveries: int = setting(
        5, "REWARDLOOP_WORKER_MAX_DELIVERIES: an event delivered this many times without success goes to the dead "
        "letters (`rewardloop rewards dead-letters`).", ge=1)
    beat_lock_ttl_s: float = setting(
        10.0, "REWARDLOOP_BEAT_LOCK_TTL_S: the scheduling beat holds a Redis lock this long, renewed every tick; "
        "another beat takes over when it lapses.", ge=2)
    ops_every_s: float = setting(
        15.0, "REWARDLOOP_OPS_EVERY_S: seconds between beat's 'fold new rewards/events into the per-minute series and "
        "check drift' task; the worst extra delay of a drift alarm.", gt=0)
    drift_policy: str = setting(
        "rollback", "REWARDLOOP_DRIFT_POLICY: 'rollback' (default: when the newest version's reward is significantly below "
        "its parent's, roll back to the parent automatically) or 'alert' (record and send the alarm only).",
        choices=("rollback", "alert"))
    canary_policy: str = setting(
        "promote", "REWARDLOOP_CANARY_POLICY: 'promote' (default: a canary becomes stable once the live comparison decides "
        "it is not worse than the stable; never while a reward-hacking style alarm stands) or 'hold' (an operator "
        "promotes).", choices=("promote", "hold"))
    drift_min_samples: int = setting(
        8, "REWARDLOOP_DRIFT_MIN_SAMPLES: rewarded replies needed on both the new version and its baseline before "
        "the live comparison (a sequential test, worker/ops/sequential.py) may decide.", ge=2)
    drift_max_samples: int = setting(
        40, "REWARDLOOP_DRIFT_MAX_SAMPLES: rewarded replies of the new version at which the live comparison decides "
        "anyway: not worse (promote) when its mean reward is above the baseline's minus half "
        "REWARDLOOP_DRIFT_MIN_EFFECT, else worse (roll back).")
    drift_alpha: float = setting(
        0.05, "REWARDLOOP_DRIFT_ALPHA: target rate of each wrong decision of the live comparison (promoting a version "
        "worse by REWARDLOOP_DRIFT_MIN_EFFECT, rolling back one as good as its baseline), in (0, 0.5).", gt=0, lt=0.5)
    drift_min_effect: float = setting(
        0.3, "REWARDLOOP_DRIFT_MIN_EFFECT: drop of the mean reward (reward units) that counts as worse; the live "
        "comparison tells such a version from one as good as its baseline (smaller drops are ties).", gt=0, le=2)
    alert_webhook: str | None = setting(None, "REWARDLOOP_ALERT_WEBHOOK: URL that receives drift alarms as JSON.")
    archive_every_s: float = setting(
        60.0, "REWARDLOOP_ARCHIVE_EVERY_S: seconds between beat's 'move finished data from Redis to the archive, apply "
        "retention and forgets' task.", gt=0)
    hot_session_idle_s: float = setting(
        7200.0, "REWARDLOOP_HOT_SESSION_IDLE_S: a session idle this long whose rewards are all final moves to the archive "
        "(with its replies, ledger entries and signals). Must exceed REWARDLOOP_WORKER_ABANDON_IDLE_S.", gt=0)
    hot_max_sessions: int = setting(
        100_000, "REWARDLOOP_HOT_MAX_SESSIONS: past this many sessions in Redis, the oldest ones whose rewards are final "
        "move sooner, however recently active.", ge=1)
    hot_stream_s: float = setting(
        3600.0, "REWARDLOOP_HOT_STREAM_S: entries of the events, rewards and pairs streams older than this move to the "
        "archive once processed (consumed by the reward workers and folded by the ops monitor), then are trimmed "
        "(XTRIM MINID).", gt=0)
    hot_stream_max: int = setting(
        1_000_000, "REWARDLOOP_HOT_STREAM_MAX: past this many entries in a stream, processed entries move sooner.",
        ge=1)
    hot_stuck_s: float = setting(
        7 * 86400.0, "REWARDLOOP_HOT_STUCK_S: a reply no worker opened a ledger entry for (its event dead-lettered) moves "
        "anyway after this long, without a reward.", gt=0)
    retention_days: float = setting(
        90.0, "REWARDLOOP_RETENTION_DAYS: archive partitions (days) older than this are deleted; 0 keeps them forever.",
        ge=0)
    retention_rated_days: float = setting(
        400.0, "REWARDLOOP_RETENTION_RATED_DAYS: the same for records with explicit feedback (thumbs, rating, choose, "
        "reason tags), the valuable ones; 0 keeps them forever.", ge=0)
    archive_crash_at: str = setting(
        "", "REWARDLOOP_ARCHIVE_CRASH_AT: for crash tests only: 'before_rename' or 'after_rename' SIGKILLs the "
        "worker's process group at that point of an archive run. Leave empty.",
        choices=("", "before_rename", "after_rename"))

    def _check(self) -> None:
        if self.hot_session_idle_s <= self.worker_abandon_idle_s:
            raise ConfigError(f"hot_session_idle_s ({self.hot_session_idle_s}) must exceed worker_abandon_idle_s "
                              f"({self.worker_abandon_idle_s}): a session's abandonment is derived before it moves "
                              "(REWARDLOOP_HOT_SESSION_IDLE_S)")
        if 0 < self.retention_rated_days < self.retention_days or self.retention_days == 0 < self.retention_rated_days:
            raise ConfigError(f"retention_rated_days ({self.retention_rated_days}) must be 0 (forever) or at least "
                              f"retention_days ({self.retention_days}): rated records are the ones kept longer "
                              "(REWARDLOOP_RETENTION_RATED_DAYS)")
        if self.drift_max_samples < self.drift_min_samples:
            raise ConfigError(f"drift_max_samples ({self.drift_max_samples}) must be >= drift_min_samples "
                              f"({self.drift_min_samples}) (REWARDLOOP_DRIFT_MAX_SAMPLES)")
