"""One learner run: lock, build the dataset, train, gate, publish or reject, advance the cursor.

The lock is a Redis key set with NX PX to a fencing token (INCR of a counter), kept alive by a
heartbeat thread. The commit (registry.commit) re-checks the token atomically, so a run whose
lock expired -- paused too long, or its heartbeat died -- cannot publish, even if it does not
know it lost the lock. A run killed at any point leaves the registry and the cursor as they
were: nothing is written to Redis before that commit.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from core.archive import Archive
from core.keys import Keys
from core.redis_conn import RELEASE_LOCK, connect
from core.registry import Registry, RegistryError
from core.settings import LearnerSettings
from learner import gate, trust_region
from learner.config import TrainConfig, load_train_config
from learner.dataset import build_dataset
from worker.rewards.config import RewardConfig, config_hash, load_reward_config

log = logging.getLogger(__name__)

# extend PX only while the key still holds our token; delete likewise
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


@dataclass
class RunResult:
    state: str  # published | rejected | skipped | busy | lost_lock | dry_run
    version: int | None = None
    reason: str = ""
    stats: dict = field(default_factory=dict)


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


def run_once(settings: LearnerSettings, cfg: TrainConfig | None = None, reward_cfg: RewardConfig | None = None,
             dry_run: bool = False, progress: bool = True, by: str = "learner",
             on_trained=None) -> RunResult:
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
        result = _run_locked(r, keys, lock, settings, cfg, reward_cfg, dry_run, progress, by, on_trained)
        if not dry_run:
            r.hset(keys.learn_last_run, mapping={"state": result.state, "version": result.version or "",
                                                 "reason": result.reason, "finished_at": time.time()})
        return result
    finally:
        lock.release()
        r.close()


def _run_locked(r, keys, lock, settings, cfg, reward_cfg, dry_run, progress, by, on_trained) -> RunResult:
    import torch

    from core.modeling import default_stop_ids, load_model
    from learner import onpolicy
    from learner.train import train, wrap_with_lora

    registry = Registry(r, keys, settings.data_dir)
    if not dry_run:
        for name in registry.clean_orphans():
            log.info("removed %s left by an interrupted run", name)
    state = registry.state()
    data = build_dataset(r, keys, cfg, reward_cfg, state["next_version"], with_pairs=cfg.losses.dpo > 0,
                         archive=Archive(settings.archive_location))
    log.info("dataset: %s", data.stats())
    if len(data.train) < cfg.min_samples:
        return RunResult("skipped", reason=f"{len(data.train)} training samples after filtering, need "
                                           f"{cfg.min_samples} (TrainConfig.min_samples)", stats=data.stats())

    t0 = time.time()
    loaded = load_model(settings.model, settings.models_dir, settings.device)
    parent, parent_dir, parent_why = registry.training_parent()
    log.info("continuing from %s", parent_why)
    lineage = None
    if parent_dir is not None:
        parent_manifest = registry.manifest(parent)
        parent_base = parent_manifest.get("base_model")
        if parent_base != loaded.model_id:
            raise RegistryError(f"parent version {parent} was trained on {parent_base}, this learner loads "
                                f"{loaded.model_id} (REWARDLOOP_MODEL); roll back to base first "
                                "(`rewardloop adapters rollback base`) or use the same model")
        trained = parent_manifest.get("training", {})   # its running reward mean, for pg_baseline 'running'
        if "lineage_reward_mean" in trained:
            lineage = (trained["lineage_reward_mean"], trained["lineage_reward_count"])
    model = wrap_with_lora(loaded.model, cfg, parent_dir)
    model.eval()
    rm, rm_note = _reward_model(r, keys, model, loaded, settings, cfg, reward_cfg, data)
    if cfg.onpolicy_n > 0 and rm is None:
        rm_note["onpolicy"] = {"added": 0, "why": "no trusted reward model to reward them"}
    elif cfg.onpolicy_n > 0:   # before training: the parent adapter draws them
        rm_note["onpolicy"] = onpolicy.add_replies(
            model, data.train, rm, cfg.onpolicy_n, cfg.onpolicy_prompts, reward_cfg.model_reward_weight,
            str(parent), state["next_version"] + 1, cfg.seed, cfg.max_reply_tokens,
            default_stop_ids(loaded.tokenizer), loaded.tokenizer.pad_token_id, loaded.device)
        log.info("on-policy replies: %s", rm_note["onpolicy"])
    pad_id = loaded.tokenizer.pad_token_id
    parent_view = gate.snapshot_parent(model, data.holdout, pad_id, loaded.device)
    log.info("training on %d samples from parent %s", len(data.train), parent)
    train_stats = train(model, data, cfg, pad_id, loaded.device, progress=progress, lineage=lineage,
                        should_stop=lambda: lock.lost)
    if train_stats["stopped"]:
        return RunResult("lost_lock", reason=f"the learner lock was lost after {train_stats['steps']} step(s); "
                         "training stopped early and nothing was published", stats=train_stats)
    if cfg.kl_line_search and data.holdout and not gate.nonfinite_weights(model):   # overshot: scale back
        train_stats["trust_region"] = trust_region.line_search(
            model, parent_view, lambda: gate.kl_to_parent(model, data.holdout, parent_view, pad_id, loaded.device),
            cfg.kl_budget)
    if on_trained is not None:
        on_trained(model)
    # a line search that found no scale put the trained weights back: the gate's KL check rejects them
    verdict = gate.evaluate(model, data.holdout, parent_view, cfg, pad_id, loaded.device, reward_model=rm)
    log.info("gate: %s %s %s", verdict.reason, verdict.stats, verdict.notes)

    version = state["next_version"] + 1
    manifest = {
        "version": version, "parent": parent, "parent_choice": parent_why, "base_model": loaded.model_id,
        "state": "published" if verdict.passed else "rejected",
        "reason": "" if verdict.passed else verdict.reason,
        "created": time.time(), "train_seconds": time.time() - t0,
        "samples_used": len(data.train), "holdout": len(data.holdout), "dataset": data.stats(),
        "reward_config_hash": config_hash(reward_cfg),
        "stream_range": [data.train[0].stream_id if data.train else None, data.last_id],
        "training": train_stats, "gate": {"passed": verdict.passed, "reason": verdict.reason,
                                          "canary": verdict.canary, "stats": verdict.stats, "notes": verdict.notes},
        "reward_model": rm_note,
        "config": cfg.to_dict(), "torch": torch.__version__,
    }
    if dry_run:
        return RunResult("dry_run", version=None, reason=verdict.reason, stats=manifest)

    # too little evidence to judge offline: serve a share of sessions first, whatever the mode
    mode = ("canary" if verdict.canary else settings.publish_mode) if verdict.passed else "reject"
    staged = registry.stage(model, manifest)
    manifest = registry.manifest_of(staged)
    ok, why = registry.commit(staged, manifest, lock.token, mode, settings.canary_share,
                              data.last_id, data.last_pair_id, by)
    if not ok:
        log.warning("run not committed: %s", why)
        return RunResult("lost_lock", reason=why, stats=manifest)
    return RunResult(manifest["state"], version=version, reason=manifest["reason"], stats=manifest)


def _reward_model(r, keys, model, loaded, settings, cfg, reward_cfg, data) -> tuple[object, dict]:
    """Refresh the reward model; reward the unscored replies with it when it is trusted.
    Returns (the model for the gate or None, what happened, for the manifest)."""
    if not cfg.reward_model:   # unscored replies stay out of training
        return None, {"used": False, "why": "TrainConfig.reward_model is off"}
    from learner import reward_data
    from learner.reward_model import extract_features
    rm = reward_data.refresh(r, keys, model, loaded.device, loaded.model_id, settings.data_dir,
                             cfg.reward_model_window, min_auroc=cfg.reward_model_min_auroc,
                             archive=Archive(settings.archive_location))
    note = {"used": False, "metrics": {k: {m: v for m, v in s.items() if m != "reliability"}
                                       for k, s in (rm.metrics if rm else {}).items() if isinstance(s, dict)}}
    if not reward_data.trusted(rm, cfg.reward_model_min_auroc):
        note["why"] = f"held-out AUROC below {cfg.reward_model_min_auroc:g} (or too few labelled replies)"
        return None, note
    note["used"] = True
    if data.unscored:
        feats = extract_features(model, [(s.prompt_ids, s.reply_ids) for s in data.unscored], loaded.device)
        scores = rm.reward(feats) * reward_cfg.model_reward_weight
        data.train.extend(dataclasses.replace(s, reward=float(v)) for s, v in zip(data.unscored, scores))
        note["rewarded_unscored"] = len(data.unscored)
    return rm, note
