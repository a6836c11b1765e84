"""The learner's settings (`rewardloop train`, `rewardloop adapters`, the `learn` queue), and a
Celery worker that runs learner tasks beside reward tasks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config_fields import setting
from core.settings.common import CommonSettings
from core.settings.worker import WorkerSettings


@dataclass(frozen=True)
class LearnerSettings(CommonSettings):
    """The learner (`rewardloop train`, `rewardloop adapters`, the `learn` queue)."""
    min_samples: int = setting(64, "REWARDLOOP_MIN_SAMPLES: new final rewards needed before a learner run.", ge=1)
    publish_mode: str = setting(
        "canary", "REWARDLOOP_PUBLISH_MODE: 'canary' (new adapters serve a share of sessions first) or 'stable' (new "
        "adapters serve everyone at once).", choices=("canary", "stable"))
    train_config: Path | None = setting(
        None, "REWARDLOOP_TRAIN_CONFIG: TOML file overriding learner settings (learner/config.py TrainConfig: "
        "minibatch_size, ..., and the tables [step], [lora], [losses], [kto], [pg], [gate], ...). Unset: the defaults.")
    learn_lock_ttl_s: int = setting(
        120, "REWARDLOOP_LEARN_LOCK_TTL_S: seconds a learner run's lock lives without a heartbeat; a run whose lock "
        "expired cannot publish.", ge=1)
    learner_machine: str = setting(
        "auto", "REWARDLOOP_LEARNER_MACHINE: 'auto' (default: the learner shares the machine when a live server reports "
        "from the same host name), 'shared' (always yield, to any server) or 'dedicated' (never: e.g. a GPU "
        "learner on its own machine, or containers whose host names differ). Sharing, the learner lowers its CPU "
        "priority (REWARDLOOP_LEARNER_NICE) and its torch threads (half the cores) and waits between optimizer "
        "steps while a server has streams generating or waiting.", choices=("auto", "shared", "dedicated"))
    learner_nice: int = setting(
        10, "REWARDLOOP_LEARNER_NICE: the nice value a learner sharing the machine runs at (0-19; 0 = keep its "
        "priority). A process cannot raise its priority again, so a learner worker keeps it.", ge=0, le=19)
    learner_yield_max_s: float = setting(
        30.0, "REWARDLOOP_LEARNER_YIELD_MAX_S: longest the learner waits before one optimizer step while chat is busy; "
        "then it takes the step anyway (so a server that is never idle still gets new versions, slowly).",
        ge=0, le=3600)


@dataclass(frozen=True)
class LearnerWorkerSettings(WorkerSettings, LearnerSettings):
    """A Celery worker that consumes the `learn` queue (it runs learner tasks beside reward tasks)."""
