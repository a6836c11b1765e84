"""One learner run in stages that share one `RunContext`:

    prepare  the registry's state, the dataset (new rewards + a replay sample), the parent (the
             canary unless found worse, else the stable), the policy (the cached base model plus
             the parent's adapter), the reward model (cached features), on-policy replies
    train    the parent's held-out view, the optimizer steps (their number from the samples, the
             learning rate watched by the KL controller, chat first on a shared machine), then
             the update scaled to land near the KL target (learner/trust_region.py)
    judge    the gate: finite weights, KL budget, counterfactual estimate
    publish  the manifest, the staged folder, the fenced commit

Nothing is written to Redis before the commit in `publish`; a run killed at any point leaves
the registry and the cursor as they were. learner/runner.py holds the lock and calls the stages.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from core.registry import Registry, RegistryError
from learner import gate
from learner.config import TrainConfig
from learner.dataset import build_dataset
from learner.samples import Dataset

log = logging.getLogger(__name__)

KL_PROBE = 16   # held-out replies the KL readings of the step size use (the gate reads all of them)


@dataclass
class RunResult:
    state: str  # published | rejected | skipped | busy | lost_lock | dry_run
    version: int | None = None
    reason: str = ""
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    progress: bool = True
    by: str = "learner"
    on_trained: Callable[[Any], None] | None = None   # called with the model between training and the gate


@dataclass
class RunContext:
    """What the stages share. The first block is given; the rest is filled in stage by stage."""
    settings: Any            # LearnerSettings
    cfg: TrainConfig
    reward_cfg: Any          # RewardConfig
    r: Any                   # redis.Redis
    keys: Any                # Keys
    lock: Any                # runner.LearnerLock
    options: RunOptions
    chat: Any = None         # learner.chat_first.ChatFirst, or None
    archive: Any = None      # core.archive.Archive behind Redis for the history reads, or None
    registry: Registry | None = None
    state: dict = field(default_factory=dict)
    data: Dataset | None = None
    policy: Any = None       # learner.policy.Policy
    parent: str = "base"
    parent_dir: Any = None
    parent_why: str = ""
    lineage: tuple[float, float] | None = None
    reward_model: Any = None
    notes: dict = field(default_factory=dict)          # reward model, on-policy: for the manifest
    parent_view: gate.ParentView | None = None
    train_stats: dict = field(default_factory=dict)
    verdict: gate.GateResult | None = None
    started: float = field(default_factory=time.time)
    forwards_at_start: int = 0

    @property
    def version(self) -> int:
        return self.state["next_version"] + 1


def prepare(ctx: RunContext) -> RunResult | None:
    """Read what the run trains on and set the policy up; a RunResult when there is nothing to do."""
    ctx.registry = Registry(ctx.r, ctx.keys, ctx.settings.data_dir)
    if not ctx.options.dry_run:
        for name in ctx.registry.clean_orphans():
            log.info("removed %s left by an interrupted run", name)
    ctx.state = ctx.registry.state()
    cfg = ctx.cfg
    ctx.data = build_dataset(ctx.r, ctx.keys, cfg, ctx.reward_cfg, ctx.state["next_version"],
                             with_pairs=cfg.losses.dpo > 0, archive=ctx.archive)
    log.info("dataset: %s", ctx.data.stats())
    if len(ctx.data.train) < cfg.min_samples:
        return RunResult("skipped", reason=f"{len(ctx.data.train)} training samples after filtering, need "
                                           f"{cfg.min_samples} (TrainConfig.min_samples)", stats=ctx.data.stats())
    from learner.policy import Policy
    ctx.policy = Policy.load(ctx.settings.model, ctx.settings.models_dir, ctx.settings.device)
    ctx.forwards_at_start = ctx.policy.forwards
    ctx.parent, ctx.parent_dir, ctx.parent_why = ctx.registry.training_parent()
    log.info("continuing from %s", ctx.parent_why)
    ctx.lineage = _parent_lineage(ctx)
    ctx.policy.wrap(cfg.lora, cfg.seed, ctx.parent_dir)
    ctx.reward_model = _reward_model(ctx)
    if cfg.onpolicy.n > 0:
        _onpolicy(ctx)
    return None


def _parent_lineage(ctx: RunContext) -> tuple[float, float] | None:
    """The parent's running reward mean (pg.baseline 'running'); checks it was trained on this base model."""
    if ctx.parent_dir is None:
        return None
    manifest = ctx.registry.manifest(ctx.parent)
    if manifest.base_model != ctx.policy.model_id:
        raise RegistryError(f"parent version {ctx.parent} was trained on {manifest.base_model}, this learner "
                            f"loads {ctx.policy.model_id} (REWARDLOOP_MODEL); roll back to base first "
                            "(`rewardloop adapters rollback base`) or use the same model")
    trained = manifest.training or {}
    if "lineage_reward_mean" in trained:
        return trained["lineage_reward_mean"], trained["lineage_reward_count"]
    return None


def _reward_model(ctx: RunContext):
    """Refresh the reward model (features from the cache); reward the unscored replies with it when
    it is trusted. Returns the model for the gate, or None."""
    cfg, data = ctx.cfg, ctx.data
    if not cfg.reward_model.enabled:   # unscored replies stay out of training
        ctx.notes["reward_model"] = {"used": False, "why": "TrainConfig.reward_model.enabled is off"}
        return None
    from learner import reward_data
    from learner.feature_cache import FeatureCache
    from learner.reward_model import RewardModelConfig
    cache = FeatureCache(ctx.settings.data_dir, ctx.policy.model_id, RewardModelConfig().max_reply_tokens,
                         keep=2 * cfg.reward_model.window)
    rm = reward_data.refresh(ctx.r, ctx.keys, ctx.policy, data_dir=ctx.settings.data_dir,
                             window=cfg.reward_model.window, cache=cache, min_auroc=cfg.reward_model.min_auroc,
                             archive=ctx.archive)
    note = {"used": False, "metrics": {k: {m: v for m, v in s.items() if m != "reliability"}
                                       for k, s in (rm.metrics if rm else {}).items() if isinstance(s, dict)}}
    ctx.notes["reward_model"] = note
    if reward_data.trusted(rm, cfg.reward_model.min_auroc):
        note["used"] = True
        if data.unscored:
            feats = cache.features(ctx.policy, [(s.reply_id, s.prompt_ids, s.reply_ids) for s in data.unscored])
            scores = rm.reward(feats) * ctx.reward_cfg.model_reward_weight
            data.train.extend(dataclasses.replace(s, reward=float(v)) for s, v in zip(data.unscored, scores))
            note["rewarded_unscored"] = len(data.unscored)
    else:
        note["why"] = f"held-out AUROC below {cfg.reward_model.min_auroc:g} (or too few labelled replies)"
        rm = None
    cache.save()
    note["features"] = {"extracted": cache.extracted, "cached": cache.hits}
    return rm


def _onpolicy(ctx: RunContext) -> None:
    """Replies the parent adapter draws itself, rewarded by the trusted reward model (before training)."""
    note = ctx.notes["reward_model"] if "reward_model" in ctx.notes else ctx.notes.setdefault("reward_model", {})
    if ctx.reward_model is None:
        note["onpolicy"] = {"added": 0, "why": "no trusted reward model to reward them"}
        return
    from learner import onpolicy
    cfg = ctx.cfg
    note["onpolicy"] = onpolicy.add_replies(
        ctx.policy, ctx.data.train, ctx.reward_model, n=cfg.onpolicy.n, max_prompts=cfg.onpolicy.prompts,
        reward_weight=ctx.reward_cfg.model_reward_weight, parent=str(ctx.parent), run=ctx.version, seed=cfg.seed,
        max_reply_tokens=cfg.max_reply_tokens)
    log.info("on-policy replies: %s", note["onpolicy"])


def kl_probe(data: Dataset) -> tuple[list, str]:
    """The replies the step size's KL readings use: held-out ones (the gate's measure), or, when a
    run is too small to hold any out, some of its training replies."""
    if data.holdout:
        return data.holdout[:KL_PROBE], "holdout"
    logged = [s for s in data.train if not s.onpolicy]
    return logged[:KL_PROBE], "train"
