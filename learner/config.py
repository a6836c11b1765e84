"""Learner configuration: frozen dataclasses, a `help` for every field, validation that names
the field and the bad value. The resolved config is saved inside every adapter's manifest.

A TOML file (REWARDLOOP_TRAIN_CONFIG) or `--set key=value` flags override the defaults; nested
tables `[lora]`, `[losses]` and `[step]` (or dotted keys `lora.rank`, `losses.kl`,
`step.kl_target`) reach the nested parts.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from learner.losses import LossWeights

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _f(default, help: str, **kw):
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _bad(cls: str, name: str, value, want: str) -> ValueError:
    return ValueError(f"{cls}.{name} must be {want}; got {value!r}")


@dataclass(frozen=True)
class LoraSettings:
    rank: int = _f(16, "LoRA rank r: size of the low-rank update per adapted matrix.")
    alpha: int = _f(32, "LoRA alpha: the update is scaled by alpha / rank.")
    dropout: float = _f(0.05, "Dropout on the LoRA input during training (0..1).")
    target_modules: tuple[str, ...] = _f(ALL_LINEAR, "Module names that get a LoRA update (default: all "
                                                     "linear layers of a Llama block).")

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, (list, str)):
            mods = (self.target_modules,) if isinstance(self.target_modules, str) else self.target_modules
            object.__setattr__(self, "target_modules", tuple(mods))
        if not isinstance(self.rank, int) or self.rank < 1:
            raise _bad("LoraSettings", "rank", self.rank, "an integer >= 1")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise _bad("LoraSettings", "alpha", self.alpha, "a number > 0")
        if not 0 <= self.dropout < 1:
            raise _bad("LoraSettings", "dropout", self.dropout, "in [0, 1)")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise _bad("LoraSettings", "target_modules", self.target_modules, "a non-empty list of module names")


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
    kl_target: float = _f(0.3, "Target mean per-token KL(new || parent) of one run, in nats, measured on held-out "
                               "logged prompts. After training, the update is scaled (parent + a x update) so the "
                               "KL lands in 0.7-1.15 x this; the gate's KL budget is 1.5 x this. 0.3: the bench runs "
                               "that lifted held-out reward most (docs/learning.md).")
    lr: float = _f(1e-3, "AdamW learning rate a run starts with; halved for the rest of the run when a check "
                         "finds the KL already over twice the target (the scale search lands it after).")
    min_steps: int = _f(8, "Fewest optimizer steps per run: a small run takes several passes over its samples "
                           "(epochs = ceil(min_steps / mini-batches), at most max_epochs); a large one one pass.")
    max_epochs: int = _f(4, "Most passes over a run's samples.")
    max_scale: float = _f(2.0, "Largest update scale the search tries when the trained update stays below the "
                               "target (extrapolation along the update direction; 1 = never).")
    mode: str = _f("kl_target", "'kl_target' (default: scale the update to land near kl_target) or 'fixed' (train "
                                "at lr and keep the trained weights; the gate still checks 1.5 x kl_target).")

    def __post_init__(self) -> None:
        for name in ("kl_target", "lr", "max_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise _bad("StepSettings", name, v, "a finite number > 0")
        if self.max_scale < 1:
            raise _bad("StepSettings", "max_scale", self.max_scale, "a finite number >= 1")
        for name, lo, hi in (("min_steps", 1, 10_000), ("max_epochs", 1, 1000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise _bad("StepSettings", name, v, f"an integer in [{lo}, {hi}]")
        if self.mode not in ("kl_target", "fixed"):
            raise _bad("StepSettings", "mode", self.mode, "'kl_target' or 'fixed'")


@dataclass(frozen=True)
class TrainConfig:
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    minibatch_size: int = _f(8, "Replies per optimizer step.")
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this (0 = no clipping).")
    seed: int = _f(0, "Seed of the shuffle, the LoRA init and the held-out split.")
    pg_clip_eps: float = _f(0.2, "PPO clip epsilon of the importance ratio.")
    pg_ratio_cap: float = _f(3.0, "Dual clip: a token with a negative advantage weighs at most this times its "
                                  "advantage, whatever its importance ratio (stale replayed replies and "
                                  "behavior/learner precision gaps cannot blow up an update). 0 = off; else > 1.")
    replay_window: int = _f(512, "Incremental runs: the newest this many final rewards before the learner cursor "
                                 "form the pool a run's replay sample is drawn from (0 = new rewards only).")
    replay_ratio: float = _f(1.0, "Incremental runs: a run trains on its new rewards plus a replay sample of at most "
                                  "this many older ones per new one (seeded per run), so its cost grows with the new "
                                  "data, not with the history. 0 = new rewards only.")
    reward_model: bool = _f(True, "Train a reward model (P[liked | prompt, reply] on the frozen base model) each "
                                  "run: it rewards replies no user signalled (RewardConfig.no_signal_policy = "
                                  "'model') and gives the gate a doubly-robust estimate.")
    reward_model_window: int = _f(4096, "Newest final rewards the reward model learns from.")
    reward_model_min_auroc: float = _f(0.6, "The reward model is used only when its held-out AUROC on 'liked' is "
                                            "at least this (0.5 = chance).")
    onpolicy_n: int = _f(0, "Replies the learner samples itself per logged prompt from the parent adapter and "
                            "rewards with the trusted reward model (learner/onpolicy.py); 0 = off.")
    onpolicy_prompts: int = _f(8, "Most distinct logged prompts (newest first) that get onpolicy_n replies per run.")
    kto_beta: float = _f(0.1, "KTO beta (used when losses.kto > 0).")
    kto_labels: str = _f("baseline", "KTO's desirable label: 'sign' = reward > 0 (TRL's thumbs); 'baseline' = reward "
                         "above the run's policy-gradient baseline (pg_baseline), so a population that is mostly "
                         "displeased still has desirable replies to move towards.")
    kto_balance: bool = _f(True, "Weigh KTO's desirable and undesirable replies so that each class counts half "
                                  "of the run (TRL's desirable_weight/undesirable_weight): with 80 % undesirable "
                                  "replies, plain KTO mostly pushes every reply down.")
    dpo_beta: float = _f(0.1, "DPO beta (used when losses.dpo > 0).")
    sft_threshold: float = _f(0.5, "Replies with reward >= this are imitated by the SFT term.")
    pg_baseline: str = _f("batch", "Policy-gradient baseline: 'batch' = the run's mean reward (a small run of "
                          "mostly good replies pushes its below-mean good ones down); 'running' = the mean "
                          "reward of this run and the earlier runs of the adapter's lineage (see "
                          "baseline_window); 'zero' = the reward scale's neutral point (good replies always "
                          "up, bad ones down, as KTO's labels).")
    adv_scale: str = _f("minibatch", "Advantage normalisation: 'minibatch' = each mini-batch's RMS around the "
                        "baseline; 'run' = one RMS over the whole run (a mini-batch of replies just above the "
                        "baseline then gets a small push, not a unit one).")
    pg_reduce: str = _f("token", "Policy-gradient average: 'token' = over all reply tokens of a mini-batch (a "
                        "long reply weighs more); 'reply' = per reply first, then over replies.")
    baseline_window: int = _f(256, "pg_baseline 'running': earlier samples of the lineage weigh as at most this "
                                   "many samples against this run's.")
    cf_margin: float = _f(0.1, "Gate: the new adapter's counterfactual (SNIPS) reward may be at most this "
                               "much below the serving version's.")
    cf_min_ess: float = _f(30.0, "Gate: below this effective sample size the counterfactual estimate does not "
                                 "decide; the version goes out as canary and the live comparison decides.")
    cf_require_ess: bool = _f(False, "Gate: reject when the counterfactual effective sample size is below "
                                     "cf_min_ess (default: pass with a warning in the manifest).")
    holdout_share: float = _f(0.2, "Share of the new samples kept out of training for the gate (0..0.9).")
    max_staleness: int = _f(3, "Drop samples generated by an adapter more than this many versions older "
                               "than the newest one ('base' counts as version 0).")
    min_samples: int = _f(2, "Fewest training samples (after filtering) worth a run; fewer: skip the run "
                             "and leave the cursor where it is. (When runs start is REWARDLOOP_MIN_SAMPLES.)")
    max_samples: int = _f(4096, "Most reward entries one run reads.")
    max_reply_tokens: int = _f(512, "Longer replies are cut to this many tokens for training.")
    losses: LossWeights = _f(LossWeights(), "Objective mix: pg, kl, sft, kto, dpo weights.")
    lora: LoraSettings = _f(LoraSettings(), "LoRA shape of a fresh adapter (a continued adapter keeps its own).")
    step: StepSettings = _f(StepSettings(), "Step size: the per-run KL target, the starting learning rate, how many "
                                            "steps follow from the samples.")

    def __post_init__(self) -> None:
        if isinstance(self.losses, dict):
            object.__setattr__(self, "losses", LossWeights(**self.losses))
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraSettings(**self.lora))
        if isinstance(self.step, dict):
            object.__setattr__(self, "step", StepSettings(**self.step))
        positive = {"minibatch_size": self.minibatch_size,
                    "min_samples": self.min_samples, "max_samples": self.max_samples,
                    "max_reply_tokens": self.max_reply_tokens, "kto_beta": self.kto_beta,
                    "dpo_beta": self.dpo_beta, "pg_clip_eps": self.pg_clip_eps}
        for name, v in positive.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise _bad("TrainConfig", name, v, "a finite number > 0")
        for name in ("minibatch_size", "min_samples", "max_samples", "max_reply_tokens",
                     "max_staleness", "seed", "baseline_window"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise _bad("TrainConfig", name, getattr(self, name), "an integer")
        for name in ("weight_decay", "grad_clip", "cf_margin", "cf_min_ess", "max_staleness"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise _bad("TrainConfig", name, v, "a finite number >= 0")
        if self.pg_baseline not in ("batch", "running", "zero"):
            raise _bad("TrainConfig", "pg_baseline", self.pg_baseline, "'batch', 'running' or 'zero'")
        if self.adv_scale not in ("minibatch", "run"):
            raise _bad("TrainConfig", "adv_scale", self.adv_scale, "'minibatch' or 'run'")
        if self.kto_labels not in ("sign", "baseline"):
            raise _bad("TrainConfig", "kto_labels", self.kto_labels, "'sign' or 'baseline'")
        if not isinstance(self.kto_balance, bool):
            raise _bad("TrainConfig", "kto_balance", self.kto_balance, "true or false")
        if self.pg_reduce not in ("token", "reply"):
            raise _bad("TrainConfig", "pg_reduce", self.pg_reduce, "'token' or 'reply'")
        if self.baseline_window < 0:
            raise _bad("TrainConfig", "baseline_window", self.baseline_window, "an integer >= 0")
        if self.pg_ratio_cap != 0 and not (math.isfinite(self.pg_ratio_cap) and self.pg_ratio_cap > 1):
            raise _bad("TrainConfig", "pg_ratio_cap", self.pg_ratio_cap, "0 (off) or a finite number > 1")
        for name, hi in (("onpolicy_n", 16), ("onpolicy_prompts", 256)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
                raise _bad("TrainConfig", name, v, f"an integer in [0, {hi}]")
        if isinstance(self.replay_ratio, bool) or not isinstance(self.replay_ratio, (int, float)) \
                or not math.isfinite(self.replay_ratio) or not 0 <= self.replay_ratio <= 16:
            raise _bad("TrainConfig", "replay_ratio", self.replay_ratio, "a finite number in [0, 16]")
        for name in ("replay_window", "reward_model_window"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise _bad("TrainConfig", name, v, "an integer >= 0")
        if not 0 <= self.reward_model_min_auroc <= 1:
            raise _bad("TrainConfig", "reward_model_min_auroc", self.reward_model_min_auroc, "in [0, 1]")
        if not 0 <= self.holdout_share <= 0.9:
            raise _bad("TrainConfig", "holdout_share", self.holdout_share, "in [0, 0.9]")
        if not -1 <= self.sft_threshold <= 1:
            raise _bad("TrainConfig", "sft_threshold", self.sft_threshold, "in [-1, 1] (rewards are clipped there)")

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
