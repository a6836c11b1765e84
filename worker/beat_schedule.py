"""Every periodic task, in one place. Only the beat holding the Redis leader lock sends them
(worker/leader.py), so two beats never double the work. `expires` drops a tick that no worker
picked up in time instead of letting a backlog pile up while workers are down."""
from __future__ import annotations

from datetime import timedelta

from core.settings import WorkerSettings


def build_schedule(settings: WorkerSettings) -> dict:
    def every(seconds: float, task: str) -> dict:
        return {"task": task, "schedule": timedelta(seconds=seconds), "options": {"expires": max(2 * seconds, 5.0)}}

    return {
        "process-events": every(settings.worker_events_every_s, "worker.tasks.process_events"),
        "finalize-due-rewards": every(settings.worker_finalize_every_s, "worker.tasks.finalize_due"),
        "derive-abandonment": every(settings.worker_abandon_every_s, "worker.tasks.derive_abandonment"),
        "reclaim-stale-events": every(settings.worker_reclaim_every_s, "worker.tasks.reclaim_stale"),
        "ops-monitor": every(settings.ops_every_s, "worker.tasks.ops_tick"),
        "archive": every(settings.archive_every_s, "worker.tasks.archive"),
        "learner-maybe-train": every(settings.update_every_s, "learner.tasks.maybe_train"),
    }
