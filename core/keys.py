"""Redis key names, in one place. Pure: no Redis import.

Every key carries the deployment prefix (REWARDLOOP_PREFIX, default `rl:`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "rl:"

    # streams
    @property
    def events(self) -> str:
        """Stream of every turn, reply and feedback event (consumer group `rewarders`)."""
        return self.prefix + "events"

    @property
    def rewards(self) -> str:
        """Stream of final rewards, read by the learner."""
        return self.prefix + "rewards"

    def reply(self, reply_id: str) -> str:
        """Hash: everything about one generated reply (prompt, tokens, log-probs, version, times)."""
        return f"{self.prefix}reply:{reply_id}"

    def session(self, session_id: str) -> str:
        """List of reply ids that form the session's history, in turn order."""
        return f"{self.prefix}session:{session_id}"

    def session_meta(self, session_id: str) -> str:
        """Hash: user_id, created, last_active, title (from the first message, or renamed)."""
        return f"{self.prefix}session_meta:{session_id}"

    def session_replies(self, session_id: str) -> str:
        """List of every reply id generated in the session (candidates and regenerations too)."""
        return f"{self.prefix}session_replies:{session_id}"

    @property
    def sessions(self) -> str:
        """Sorted set session_id -> created time."""
        return self.prefix + "sessions"

    def user_sessions(self, user_id: str) -> str:
        """Sorted set of one user's sessions -> created time."""
        return f"{self.prefix}user_sessions:{user_id}"

    def session_titles(self, user_id: str) -> str:
        """Hash session_id -> the title the user gave a conversation (a rename; it wins over the
        title from the first message in session_meta, and works for archived sessions too)."""
        return f"{self.prefix}session_titles:{user_id}"

    def feedback_id(self, feedback_id: str) -> str:
        """Idempotency record of one client feedback id."""
        return f"{self.prefix}fb:{feedback_id}"

    def reward(self, reply_id: str) -> str:
        """Ledger entry of one reply."""
        return f"{self.prefix}reward:{reply_id}"

    @property
    def adapters(self) -> str:
        return self.prefix + "adapters"

    @property
    def adapters_changed(self) -> str:
        return self.prefix + "adapters:changed"

    # --- reward workers (worker/) ---------------------------------------------------------
    @property
    def pairs(self) -> str:
        """Stream of preference pairs (chosen_id, rejected_id, source) for DPO-style training."""
        return self.prefix + "pairs"

    @property
    def dead_letters(self) -> str:
        """Stream of events that failed too often, with the error."""
        return self.prefix + "dead_letters"

    def lock(self, name: str) -> str:
        """A named lock (beat leadership, learner runs)."""
        return f"{self.prefix}lock:{name}"

    def user(self, user_id: str) -> str:
        """Hash of per-user flags: anomaly weight and reason, opt-out."""
        return f"{self.prefix}user:{user_id}"

    def user_positives(self, user_id: str) -> str:
        """List of 1/0, newest first (capped): for each recent reply the user signalled positively,
        whether it was unsafe (the unsafe-voter weight, worker/rewards/batches.py)."""
        return f"{self.prefix}user_positives:{user_id}"

    @property
    def flagged_users(self) -> str:
        """Sorted set user_id -> time: users whose weight is below 1 now (anomaly or unsafe voter), for /ops."""
        return self.prefix + "users:flagged"

    def reward_signals(self, reply_id: str) -> str:
        """Hash event_id -> signal JSON of one reply: HSETNX makes each event count once."""
        return f"{self.prefix}reward_signals:{reply_id}"

    @property
    def rewards_pending(self) -> str:
        """Sorted set reply_id -> due time (ended_at + wait window) of replies not yet final."""
        return self.prefix + "rewards:pending"

    def user_votes(self, user_id: str) -> str:
        """List of one user's recent votes (JSON [kind, value, seconds after reply end]), newest first."""
        return f"{self.prefix}user_votes:{user_id}"

    @property
    def worker_stats(self) -> str:
        """Hash of reward-worker counters (events, signals, late signals, dead letters, task runs)."""
        return self.prefix + "worker:stats"

    @property
    def worker_errors(self) -> str:
        """Hash events stream id -> last processing error, until the entry is acked or dead-lettered."""
        return self.prefix + "worker:errors"

    # --- learner and hot swap (learner/, service/) -----------------------------------------
    @property
    def adapter_history(self) -> str:
        """Stream of every publish, promotion, rollback and swap, with who and why."""
        return self.prefix + "adapters:history"

    @property
    def learn_cursor(self) -> str:
        """String: id of the last `rewards` stream entry a learner run consumed (published or
        rejected); runs read after it. Absent: start from the beginning of the stream."""
        return self.prefix + "learn:cursor"

    @property
    def learn_pairs_cursor(self) -> str:
        """String: id of the last `pairs` stream entry a learner run consumed."""
        return self.prefix + "learn:pairs_cursor"

    @property
    def learn_fence(self) -> str:
        """Counter: fencing tokens of learner runs (INCR per attempt); the lock holds the token."""
        return self.prefix + "learn:fence"

    @property
    def learn_lock(self) -> str:
        """The learner-run lock (SET NX PX with the run's fencing token)."""
        return self.lock("learner")

    @property
    def learn_last_run(self) -> str:
        """Hash: outcome of the last learner run (state, version, reason, samples, finished_at)."""
        return self.prefix + "learn:last_run"

    @property
    def servers(self) -> str:
        """Hash server id -> JSON heartbeat of one chat server, written every second by that server
        only (service/serving/load.py): streams generating (`active`) and waiting for their first
        token (`waiting`) -- the busy signal a learner sharing the machine yields to; `at`; whether
        it saw a learner run on (`training`); its cumulative chat counters per learner state
        (tokens, busy seconds, time to first token). A server removes its field when it stops;
        readers ignore entries whose `at` is old (a server that died)."""
        return self.prefix + "servers"

    @property
    def adapter_swaps(self) -> str:
        """Stream of swap results reported by each server (loaded / refused, how long)."""
        return self.prefix + "adapters:swaps"

    # --- developers and privacy (service/sessions.py, service/privacy.py) -----------------
    @property
    def forgotten_users(self) -> str:
        """Sorted set user_id -> time `rewardloop users forget` removed the user's data. The
        tombstone itself is the `forgotten` field of `user:{user_id}` (what the learner checks)."""
        return self.prefix + "users:forgotten"

    # --- the archive (worker/archive/ is the only writer) -----------------------------------
    def archive_cursor(self, stream: str) -> str:
        """String: id of the newest entry of `stream` (events | rewards | pairs) in a renamed archive file;
        the stream is trimmed (XTRIM MINID) only below it."""
        return f"{self.prefix}archive:cursor:{stream}"

    @property
    def archive_status(self) -> str:
        """Hash: the last archive run (at, ok, error, failing_since, moved counts, archive size, Redis memory)."""
        return self.prefix + "archive:status"

    @property
    def archive_lock(self) -> str:
        """One archive run at a time."""
        return self.lock("archive")

    @property
    def deleted_sessions(self) -> str:
        """Sorted set session_id -> time a conversation was deleted: readers hide its archived rows, the
        archive task rewrites the files that hold them (with `users:forgotten`, the tombstones)."""
        return self.prefix + "sessions:deleted"

    # --- operators: series, drift monitor, alarms (worker/ops_store.py is the only writer) -----
    def ops_bucket(self, step_s: int, start: int) -> str:
        """Hash "{counter}|{version}" -> number: one minute (step 60) or hour (3600) of the series."""
        return f"{self.prefix}ops:b{step_s}:{start}"

    def ops_cursor(self, stream: str) -> str:
        """String: id of the last entry of `stream` (rewards | events) folded into the series."""
        return f"{self.prefix}ops:cursor:{stream}"

    @property
    def ops_totals(self) -> str:
        """Hash "{counter}|{version}" -> all-time sums (Prometheus counters and histograms)."""
        return self.prefix + "ops:totals"

    def ops_version_rewards(self, version: str) -> str:
        """List of the latest rewarded values of one adapter version (newest last, capped)."""
        return f"{self.prefix}ops:vrewards:{version}"

    @property
    def ops_detectors(self) -> str:
        """Hash metric -> JSON state of its sequential drift detector (worker/drift.py to_dict)."""
        return self.prefix + "ops:detectors"

    @property
    def ops_verdicts(self) -> str:
        """Hash version -> JSON of the live comparison of that version with its baseline (the ops
        monitor writes it, worker/ops/sequential.py decides): decision promote | keep | rollback,
        `worse` and `alarm` (true: found worse, decision rollback: the learner then does not continue
        from it, core.registry.found_worse), `final`, the counts, means, log-likelihood ratio and the
        action taken."""
        return self.prefix + "ops:verdicts"

    @property
    def ops_servers_seen(self) -> str:
        """Hash server id -> JSON of that server's chat counters as last folded into the series
        (the ops monitor adds only what grew since)."""
        return self.prefix + "ops:servers_seen"

    @property
    def ops_alarms(self) -> str:
        """Stream of drift alarms (at, detector, metric, version, direction, message, evidence, action)."""
        return self.prefix + "ops:alarms"

    def scan_pattern(self) -> str:
        return self.prefix + "*"

    # --- Celery's own keys (worker/celery_app.py gives Celery this prefix) -----------------
    @property
    def celery(self) -> str:
        """Prefix of every key Celery keeps in Redis (broker queues, task results): its global_keyprefix."""
        return self.prefix + "celery:"

    def celery_queue(self, queue: str) -> str:
        """List: the broker's queue `queue` (e.g. `learn`), tasks waiting for a worker."""
        return f"{self.celery}{queue}"
