"""The Celery app of the reward workers (and the learner's `learn` queue): an entry point.

`configure(settings)` binds the app to a deployment: broker and result backend are
REWARDLOOP_REDIS_URL, every Celery key carries the deployment prefix, and the task modules
are included *by name* — this module never imports its tasks (they are `shared_task`s that
read their process context from worker/context.py), so nothing imports the app but the CLI.
"""
from __future__ import annotations

import importlib.util
import logging

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown
from kombu import Queue

from core.keys import Keys
from core.settings import WorkerSettings
from worker import context, queues
from worker.beat_schedule import build_schedule
from worker.rewards.config import load_reward_config

log = logging.getLogger(__name__)

# Longer than any task (a learner run included): a task not acked by then is redelivered.
VISIBILITY_TIMEOUT_S = 4 * 3600
TASK_MODULES = ("worker.tasks",)
LEARNER_TASKS = "learner.tasks"  # torch: imported only by workers that consume `learn`

app = Celery("rewardloop")


def configure(settings: WorkerSettings, learner_tasks: bool = True, consume_events: bool = False) -> Celery:
    """Bind `app` to this deployment. Call once, at the entry point, before starting anything.
    learner_tasks=False leaves learner.tasks out (torch, seconds to import): beat only sends by
    name, and a worker that does not consume the `learn` queue never runs them.
    consume_events=True (a worker of the `rewards` queue): every pool process runs an event
    consumer thread (worker/rewards/consumer.py), started when the process starts."""
    if not settings.redis_url:
        raise ValueError("REWARDLOOP_REDIS_URL is not set")
    load_reward_config(settings.reward_config)  # fail at start, not in the first task
    context.bind(settings, consume_events=consume_events)
    include = list(TASK_MODULES)
    if learner_tasks:
        if importlib.util.find_spec(LEARNER_TASKS) is None:
            log.warning("%s is not installed: learner runs are skipped", LEARNER_TASKS)
        else:
            include.append(LEARNER_TASKS)
    celery_prefix = Keys(settings.prefix).celery
    app.conf.update(
        broker_url=settings.redis_url,
        result_backend=settings.redis_url,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S, "global_keyprefix": celery_prefix},
        result_backend_transport_options={"global_keyprefix": celery_prefix},
        broker_connection_retry_on_startup=True,
        task_queues=[Queue(q) for q in queues.ALL],
        task_default_queue=queues.REWARDS,
        task_routes=queues.ROUTES,
        task_serializer="json", result_serializer="json", accept_content=["json"],
        result_expires=3600,
        worker_prefetch_multiplier=1,  # a long task must not sit on short ones it prefetched
        worker_hijack_root_logger=False,
        beat_schedule=build_schedule(settings),
        beat_max_loop_interval=1.0,  # the leader lock is renewed every tick
        include=include,
    )
    return app


# The event consumer lives in each pool process (after the fork: no thread is ever forked, each
# process has its own Redis connections), so `--concurrency N` runs N consumers and a process
# the pool replaces gets a fresh one. A worker that consumes no `rewards` queue starts none.
@worker_process_init.connect
def _start_event_consumer(**_) -> None:
    context.start_consumer()


@worker_process_shutdown.connect
def _stop_event_consumer(**_) -> None:
    context.stop_consumer()
