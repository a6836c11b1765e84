"""The later stages of a learner run (learner/run.py has the context and `prepare`):
train -> judge -> publish."""
from __future__ import annotations

import logging
import time

import torch

from core.manifest import AdapterManifest
from learner import gate, trust_region
from learner.config import TrainConfig
from learner.run import RunContext, RunResult, kl_probe
from learner.samples import Dataset
from learner.train import StepHooks, train
from worker.rewards.config import config_hash

log = logging.getLogger(__name__)


def train_stage(ctx: RunContext) -> RunResult | None:
    """Snapshot the parent, train to the KL target (chat first). A RunResult only when the run
    lost its lock on the way."""
    ctx.parent_view = gate.snapshot_parent(ctx.policy, ctx.data.holdout)
    log.info("training on %d samples from parent %s", len(ctx.data.train), ctx.parent)
    stats = train_to_target(ctx.policy, ctx.data, ctx.cfg, ctx.parent_view, progress=ctx.options.progress,
                            lineage=ctx.lineage, should_stop=lambda: ctx.lock.lost,
                            pause=ctx.chat.pause if ctx.chat else None)
    ctx.train_stats = stats
    if stats["stopped"]:
        return RunResult("lost_lock", reason=f"the learner lock was lost after {stats['steps']} step(s); "
                         "training stopped early and nothing was published", stats=stats)
    return None


def train_to_target(policy, data: Dataset, cfg: TrainConfig, parent_view: gate.ParentView, *, progress: bool = False,
                    lineage=None, should_stop=None, pause=None) -> dict:
    """Train `policy`'s adapter on data.train (steps from the samples, the learning rate watched
    by the KL controller), then scale the update so its KL to the parent lands near
    cfg.step.kl_target (mode 'kl_target'). The benches train offline with this too."""
    probe, probe_kind = kl_probe(data)
    kl = lambda: gate.kl_to_parent(policy, probe, parent_view)
    target = cfg.step.kl_target if cfg.step.mode == "kl_target" and probe else None
    _, total = trust_region.schedule(len(data.train), cfg.minibatch_size, cfg.step)
    control = trust_region.KlController(kl if target else None, cfg.step.kl_target, total)
    hooks = StepHooks(should_stop=should_stop, pause=pause, after_step=control.after_step)
    stats = train(policy, data, cfg, progress=progress, lineage=lineage, hooks=hooks)
    stats["kl_control"] = control.readings
    if target and not stats["stopped"] and not gate.nonfinite_weights(policy.model):
        region = trust_region.fit_scale(policy.model, parent_view.weights, kl, target, cfg.step.max_scale)
        stats["trust_region"] = dict(region, probe=probe_kind, probe_size=len(probe), target=target)
        log.info("step size: scale %.3g, KL %.4g (target %g, %d readings)", region["alpha"], region["kl"],
                 target, len(region["readings"]))
    return stats


def judge(ctx: RunContext) -> None:
    if ctx.options.on_trained is not None:
        ctx.options.on_trained(ctx.policy.model)
    ctx.verdict = gate.evaluate(ctx.policy, ctx.data.holdout, ctx.parent_view, ctx.cfg,
                                reward_model=ctx.reward_model)
    safety_probe(ctx)
    log.info("gate: %s %s %s", ctx.verdict.reason, ctx.verdict.stats, ctx.verdict.notes)


def safety_probe(ctx: RunContext) -> None:
    """The gate's last check: the parent and the new version answer the shipped probe set
    (learner/probe_run.py); significantly less safe is rejected, less relevant flagged."""
    cfg, verdict = ctx.cfg.safety, ctx.verdict
    if not cfg.enabled:
        ctx.notes["probe"] = {"decision": "skipped", "reason": "the safety probe is off (TrainConfig.safety.enabled)"}
        return
    if not verdict.passed:   # already rejected: the probe would change nothing
        ctx.notes["probe"] = {"decision": "skipped", "reason": f"rejected before the probe: {verdict.reason}"}
        return
    from learner import probe_run
    scorer = probe_run.scorer_for(ctx.settings.safety_model, str(ctx.policy.device))
    parent_probe = ctx.registry.manifest(ctx.parent).probe if ctx.parent_dir is not None else None
    probe = probe_run.check(ctx.policy, ctx.parent_view, cfg, parent=str(ctx.parent), scorer=scorer,
                            cache_dir=ctx.settings.models_dir, parent_probe=parent_probe)
    ctx.notes["probe"] = probe
    if probe["decision"] == "reject":
        verdict.passed, verdict.reason = False, probe["reason"]
    elif probe["decision"] == "flag":
        verdict.notes.append(probe["reason"])


def manifest(ctx: RunContext) -> AdapterManifest:
    cfg, data, verdict = ctx.cfg, ctx.data, ctx.verdict
    return AdapterManifest(
        version=ctx.version, parent=str(ctx.parent), parent_choice=ctx.parent_why,
        base_model=ctx.policy.model_id, state="published" if verdict.passed else "rejected",
        reason="" if verdict.passed else verdict.reason,
        created=time.time(), train_seconds=time.time() - ctx.started,
        samples_used=len(data.train), holdout=len(data.holdout), dataset=data.stats(),
        reward_config_hash=config_hash(ctx.reward_cfg),
        stream_range=[min((s.stream_id for s in data.train if s.stream_id), default=None), data.last_id],
        training=ctx.train_stats, cost=cost(ctx),
        gate={"passed": verdict.passed, "reason": verdict.reason, "canary": verdict.canary,
              "stats": verdict.stats, "notes": verdict.notes, "kl_budget": cfg.kl_budget},
        probe=ctx.notes.get("probe"),
        reward_model=ctx.notes.get("reward_model", {}), chat_first=ctx.chat.stats() if ctx.chat else None,
        config=cfg.to_dict(), torch=torch.__version__,
    )


def cost(ctx: RunContext) -> dict:
    """What the run cost, in counts (bounded by the new data, not the history)."""
    features = (ctx.notes.get("reward_model") or {}).get("features") or {}
    return {"samples_trained": len(ctx.data.train), "optimizer_steps": ctx.train_stats.get("steps", 0),
            "forward_passes": ctx.policy.forwards - ctx.forwards_at_start,
            "feature_extractions": features.get("extracted", 0), "rewards_read": ctx.data.read}


def publish(ctx: RunContext) -> RunResult:
    """The manifest; in a dry run that is all. Else stage the folder and commit (fenced by the lock)."""
    info = manifest(ctx)
    if ctx.options.dry_run:
        return RunResult("dry_run", version=None, reason=ctx.verdict.reason, stats=info.to_dict())
    verdict, settings = ctx.verdict, ctx.settings
    # too little evidence to judge offline: serve a share of sessions first, whatever the mode
    mode = ("canary" if verdict.canary else settings.publish_mode) if verdict.passed else "reject"
    staged = ctx.registry.stage(ctx.policy.model, info)
    info = ctx.registry.manifest_of(staged)
    ok, why = ctx.registry.commit(staged, info, ctx.lock.token, mode, settings.canary_share,
                                  cursor=ctx.data.last_id, pairs_cursor=ctx.data.last_pair_id, by=ctx.options.by)
    if not ok:
        log.warning("run not committed: %s", why)
        return RunResult("lost_lock", reason=why, stats=info.to_dict())
    return RunResult(info.state, version=ctx.version, reason=info.reason, stats=info.to_dict())
