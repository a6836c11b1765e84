"""Learner configuration: frozen dataclasses, a `help` for every field, validation that names
the field and the bad value. The resolved config is saved inside every adapter's manifest.

A TOML file (REWARDLOOP_TRAIN_CONFIG) or `--set key=value` flags override the defaults; nested
tables `[lora]`, `[losses]` and `[step]` (or dotted keys `lora.rank`, `losses.kl`,
`step.kl_target`) reach the nested parts.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from core.config_fields import ConfigError, setting, validate
from learner.losses import LossWeights

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    rank: int = setting(16, "LoRA rank r: size of the low-rank update per adapted matrix.", ge=1)
    alpha: int | float = setting(32, "LoRA alpha: the update is scaled by alpha / rank.", gt=0)
    dropout: float = setting(0.05, "Dropout on the LoRA input during training (0..1).", ge=0, lt=1)
    target_modules: tuple[str, ...] = setting(ALL_LINEAR, "Module names that get a LoRA update (default: all "
                                                     "linear layers of a Llama block).")

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):    # `--set lora.target_modules=q_proj`
            object.__setattr__(self, "target_modules", (self.target_modules,))
        validate(self)
        if not self.target_modules:
            raise ConfigError("LoraSettings.target_modules must be a non-empty list of module names; got ()")


# The gate's KL budget is this times the run's KL target: the line search lands a run at most
# LAND[1] x target, the gate rejects only what it could not bring there (non-finite weights, a
# held-out set that reads far higher than the probe it was fitted on).
KL_BUDGET_FACTOR = 1.5
LAND = (0.7, 1.15)   # "near the target": the band of KL / target the scale search aims for


@dataclass(frozen=True)
class StepSettings:
    """How far one run moves the policy. The step size follows from a KL target, not a constant
    learning rate, so a run on 20 samples and one on 2,000 move the policy by a comparable,
    bounded amount (learner/trust_region.py); the number of steps follows from the samples."""
    kl_target: float = setting(0.3, "Target mean per-token KL(new || parent) of one run, in nats, measured on held-out "
                               "logged prompts. After training, the update is scaled (parent + a x update) so the "
                               "KL lands in 0.7-1.15 x this; the gate's KL budget is 1.5 x this. 0.3: the bench runs "
                               "that lifted held-out reward most (docs/learning.md).", gt=0)
    lr: float = setting(1e-3, "AdamW learning rate a run starts with; halved for the rest of the run when a check "
                         "finds the KL already over twice the target (the scale search lands it after).", gt=0)
    min_steps: int = setting(8, "Fewest optimizer steps per run: a small run takes several passes over its samples "
                           "(epochs = ceil(min_steps / mini-batches), at most max_epochs); a large one one pass.", ge=1, le=10_000)
    max_epochs: int = setting(4, "Most passes over a run's samples.", ge=1, le=1000)
    max_scale: float = setting(2.0, "Largest update scale the search tries when the trained update stays below the "
                               "target (extrapolation along the update direction; 1 = never).", ge=1)
    mode: str = setting("kl_target", "'kl_target' (default: scale the update to land near kl_target) or 'fixed' (train "
                                "at lr and keep the trained weights; the gate still checks 1.5 x kl_target).", choices=("kl_target", "fixed"))

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class TrainConfig:
    weight_decay: float = setting(0.0, "AdamW weight decay.", ge=0)
    minibatch_size: int = setting(8, "Replies per optimizer step.", ge=1)
    grad_clip: float = setting(1.0, "Clip the global gradient norm to this (0 = no clipping).", ge=0)
    seed: int = setting(0, "Seed of the shuffle, the LoRA init and the held-out split.")
    pg_clip_eps: float = setting(0.2, "PPO clip epsilon of the importance ratio.", gt=0)
    pg_ratio_cap: float = setting(3.0, "Dual clip: a token with a negative advantage weighs at most this times its "
                                  "advantage, whatever its importance ratio (stale replayed replies and "
                                  "behavior/learner precision gaps cannot blow up an update). 0 = off; else > 1.", ge=0)
    replay_window: int = setting(512, "Incremental runs: the newest this many final rewards before the learner cursor "
                                 "form the pool a run's replay sample is drawn from (0 = new rewards only).", ge=0)
    replay_ratio: float = setting(1.0, "Incremental runs: a run trains on its new rewards plus a replay sample of at most "
                                  "this many older ones per new one (seeded per run), so its cost grows with the new "
                                  "data, not with the history. 0 = new rewards only.", ge=0, le=16)
    reward_model: bool = setting(True, "Train a reward model (P[liked | prompt, reply] on the frozen base model) each "
                                  "run: it rewards replies no user signalled (RewardConfig.no_signal_policy = "
                                  "'model') and gives the gate a doubly-robust estimate.")
    reward_model_window: int = setting(4096, "Newest final rewards the reward model learns from.", ge=0)
    reward_model_min_auroc: float = setting(0.6, "The reward model is used only when its held-out AUROC on 'liked' is "
                                            "at least this (0.5 = chance).", ge=0, le=1)
    onpolicy_n: int = setting(0, "Replies the learner samples itself per logged prompt from the parent adapter and "
                            "rewards with the trusted reward model (learner/onpolicy.py); 0 = off.", ge=0, le=16)
    onpolicy_prompts: int = setting(8, "Most distinct logged prompts (newest first) that get onpolicy_n replies per run.", ge=0, le=256)
    kto_beta: float = setting(0.1, "KTO beta (used when losses.kto > 0).", gt=0)
    kto_labels: str = setting("baseline", "KTO's desirable label: 'sign' = reward > 0 (TRL's thumbs); 'baseline' = reward "
                         "above the run's policy-gradient baseline (pg_baseline), so a population that is mostly "
                         "displeased still has desirable replies to move towards.", choices=("sign", "baseline"))
    kto_balance: bool = setting(True, "Weigh KTO's desirable and undesirable replies so that each class counts half "
                                  "of the run (TRL's desirable_weight/undesirable_weight): with 80 % undesirable "
                                  "replies, plain KTO mostly pushes every reply down.")
    dpo_beta: float = setting(0.1, "DPO beta (used when losses.dpo > 0).", gt=0)
    sft_threshold: float = setting(0.5, "Replies with reward >= this are imitated by the SFT term.", ge=-1, le=1)
    pg_baseline: str = setting("batch", "Policy-gradient baseline: 'batch' = the run's mean reward (a small run of "
                          "mostly good replies pushes its below-mean good ones down); 'running' = the mean "
                          "reward of this run and the earlier runs of the adapter's lineage (see "
                          "baseline_window); 'zero' = the reward scale's neutral point (good replies always "
                          "up, bad ones down, as KTO's labels).", choices=("batch", "running", "zero"))
    adv_scale: str = setting("minibatch", "Advantage normalisation: 'minibatch' = each mini-batch's RMS around the "
                        "baseline; 'run' = one RMS over the whole run (a mini-batch of replies just above the "
                        "baseline then gets a small push, not a unit one).", choices=("minibatch", "run"))
    pg_reduce: str = setting("token", "Policy-gradient average: 'token' = over all reply tokens of a mini-batch (a "
                        "long reply weighs more); 'reply' = per reply first, then over replies.", choices=("token", "reply"))
    baseline_window: int = setting(256, "pg_baseline 'running': earlier samples of the lineage weigh as at most this "
                                   "many samples against this run's.", ge=0)
    cf_margin: float = setting(0.1, "Gate: the new adapter's counterfactual (SNIPS) reward may be at most this "
                               "much below the serving version's.", ge=0)
    cf_min_ess: float = setting(30.0, "Gate: below this effective sample size the counterfactual estimate does not "
                                 "decide; the version goes out as canary and the live comparison decides.", ge=0)
    cf_require_ess: bool = setting(False, "Gate: reject when the counterfactual effective sample size is below "
                                     "cf_min_ess (default: pass with a warning in the manifest).")
    holdout_share: float = setting(0.2, "Share of the new samples kept out of training for the gate (0..0.9).", ge=0, le=0.9)
    max_staleness: int = setting(3, "Drop samples generated by an adapter more than this many versions older "
                               "than the newest one ('base' counts as version 0).", ge=0)
    min_samples: int = setting(2, "Fewest training samples (after filtering) worth a run; fewer: skip the run "
                             "and leave the cursor where it is. (When runs start is REWARDLOOP_MIN_SAMPLES.)", ge=1)
    max_samples: int = setting(4096, "Most reward entries one run reads.", ge=1)
    max_reply_tokens: int = setting(512, "Longer replies are cut to this many tokens for training.", ge=1)
    losses: LossWeights = setting(LossWeights(), "Objective mix: pg, kl, sft, kto, dpo weights.")
    lora: LoraSettings = setting(LoraSettings(), "LoRA shape of a fresh adapter (a continued adapter keeps its own).")
    step: StepSettings = setting(StepSettings(), "Step size: the per-run KL target, the starting learning rate, how many "
                                            "steps follow from the samples.")

    def __post_init__(self) -> None:
        for name, group in (("losses", LossWeights), ("lora", LoraSettings), ("step", StepSettings)):
            if isinstance(getattr(self, name), dict):      # from TOML tables or a saved manifest
                object.__setattr__(self, name, group(**getattr(self, name)))
        validate(self)
        if 0 < self.pg_ratio_cap <= 1:
            raise ConfigError(f"TrainConfig.pg_ratio_cap must be 0 (off) or a finite number > 1; "
                              f"got {self.pg_ratio_cap!r}")

    @property
    def kl_budget(self) -> float:
        """The gate's KL budget: KL_BUDGET_FACTOR x the run's KL target."""
        return KL_BUDGET_FACTOR * self.step.kl_target

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lora"]["target_modules"] = list(self.lora.target_modules)
        return d


MOVED = {"lr": "step.lr", "epochs": "step.min_steps / step.max_epochs (derived from the samples)",
         "kl_budget": "1.5 x step.kl_target", "kl_line_search": "step.mode"}


def from_dict(values: dict) -> TrainConfig:
    """A TrainConfig from plain values; unknown keys are an error that lists the known ones."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        moved = [f"{k} -> {MOVED[k]}" for k in unknown if k in MOVED]
        raise ValueError(f"unknown learner setting(s) {unknown}; known: {sorted(known)}"
                         + (f" (moved: {', '.join(moved)})" if moved else ""))
    return TrainConfig(**values)


def apply_overrides(values: dict, pairs: list[str]) -> dict:
    """`key=value` strings (value parsed as JSON, else a string) merged into `values`; dotted keys
    (`losses.kl=0`) reach nested tables."""
    out = json.loads(json.dumps(values))
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_train_config(path: Path | str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the TOML file (if any), then `key=value` overrides."""
    values: dict = {}
    if path is not None:
        with open(path, "rb") as fh:
            values = tomllib.load(fh)
    return from_dict(apply_overrides(values, overrides or []))
