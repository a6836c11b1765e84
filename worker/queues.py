"""Celery queue names and task routes, in one place.

rewards  feedback events -> ledger -> final rewards (many workers may share it)
learn    learner runs (one worker, concurrency 1: one training run at a time)
ops      housekeeping: abandoned sessions, reclaiming stale events, the drift monitor, the archive
"""
from __future__ import annotations

REWARDS = "rewards"
LEARN = "learn"
OPS = "ops"
ALL = (REWARDS, LEARN, OPS)

# task name -> queue; beat entries and `apply_async` never name a queue themselves
ROUTES = {
    "worker.tasks.process_events": {"queue": REWARDS},
    "worker.tasks.finalize_due": {"queue": REWARDS},
    "worker.tasks.derive_abandonment": {"queue": OPS},
    "worker.tasks.reclaim_stale": {"queue": OPS},
    "worker.tasks.ops_tick": {"queue": OPS},
    "worker.tasks.archive": {"queue": OPS},
    "learner.tasks.*": {"queue": LEARN},
}


def parse_queues(text: str) -> list[str]:
    """'rewards,ops' -> ['rewards', 'ops']; unknown names are an error that lists the known ones."""
    names = [q.strip() for q in text.split(",") if q.strip()]
    bad = [q for q in names if q not in ALL]
    if not names or bad:
        raise ValueError(f"unknown queue(s) {', '.join(bad) or '(none given)'}: use a comma-separated subset of "
                         f"{','.join(ALL)}")
    return names
