"""The learner's nested config groups (TRL keeps one config per trainer; here each objective and
each stage of a run has its group inside TrainConfig): policy gradient, KTO, DPO, SFT, the gate,
on-policy replies, replay and the reward model. Reached as TOML tables (`[kto]`) or dotted
`--set` keys (`kto.beta=0.2`); every field has a help and its rules (core/config_fields.py)."""
from __future__ import annotations

from dataclasses import dataclass

from core.config_fields import ConfigError, setting, validate


@dataclass(frozen=True)
class PolicyGradientSettings:
    """The clipped, importance-weighted policy gradient (used when losses.pg > 0)."""
    clip_eps: float = setting(0.2, "PPO clip epsilon of the importance ratio.", gt=0)
    ratio_cap: float = setting(3.0, "Dual clip: a token with a negative advantage weighs at most this times its "
                                    "advantage, whatever its importance ratio (stale replayed replies and "
                                    "behavior/learner precision gaps cannot blow up an update). 0 = off; else > 1.",
                               ge=0)
    baseline: str = setting("batch", "Baseline: 'batch' = the run's mean reward (a small run of mostly good replies "
                                     "pushes its below-mean good ones down); 'running' = the mean reward of this run "
                                     "and the earlier runs of the adapter's lineage (see baseline_window); 'zero' = "
                                     "the reward scale's neutral point (good replies always up, bad ones down, as "
                                     "KTO's labels).", choices=("batch", "running", "zero"))
    baseline_window: int = setting(256, "baseline 'running': earlier samples of the lineage weigh as at most this "
                                        "many samples against this run's.", ge=0)
    adv_scale: str = setting("minibatch", "Advantage normalisation: 'minibatch' = each mini-batch's RMS around the "
                                          "baseline; 'run' = one RMS over the whole run (a mini-batch of replies just "
                                          "above the baseline then gets a small push, not a unit one).",
                             choices=("minibatch", "run"))
    reduce: str = setting("token", "Average: 'token' = over all reply tokens of a mini-batch (a long reply weighs "
                                   "more); 'reply' = per reply first, then over replies.", choices=("token", "reply"))

    def __post_init__(self) -> None:
        validate(self)
        if 0 < self.ratio_cap <= 1:
            raise ConfigError(f"PolicyGradientSettings.ratio_cap must be 0 (off) or a finite number > 1; "
                              f"got {self.ratio_cap!r}")


@dataclass(frozen=True)
class KtoSettings:
    """KTO (used when losses.kto > 0, the default objective)."""
    beta: float = setting(0.1, "KTO beta.", gt=0)
    labels: str = setting("baseline", "Desirable label: 'sign' = reward > 0 (TRL's thumbs); 'baseline' = reward above "
                                      "the run's policy-gradient baseline (pg.baseline), so a population that is "
                                      "mostly displeased still has desirable replies to move towards.",
                          choices=("sign", "baseline"))
    balance: bool = setting(True, "Weigh desirable and undesirable replies so that each class counts half of the run "
                                  "(TRL's desirable_weight/undesirable_weight): with 80 % undesirable replies, plain "
                                  "KTO mostly pushes every reply down.")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class DpoSettings:
    """DPO on preference pairs (used when losses.dpo > 0)."""
    beta: float = setting(0.1, "DPO beta.", gt=0)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class SftSettings:
    """Supervised fine-tuning on the best replies (used when losses.sft > 0)."""
    threshold: float = setting(0.5, "Replies with reward >= this are imitated (rewards lie in [-1, 1]).", ge=-1, le=1)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class GateSettings:
    """The counterfactual check a new adapter passes before it is published (learner/gate.py)."""
    cf_margin: float = setting(0.1, "The new adapter's counterfactual (SNIPS) reward may be at most this much below "
                                    "the serving version's.", ge=0)
    cf_min_ess: float = setting(30.0, "Below this effective sample size the counterfactual estimate does not decide; "
                                      "the version goes out as canary and the live comparison decides.", ge=0)
    cf_require_ess: bool = setting(False, "Reject when the counterfactual effective sample size is below cf_min_ess "
                                          "(default: pass with a warning in the manifest).")
    holdout_share: float = setting(0.2, "Share of the new samples kept out of training for the gate (0..0.9).",
                                   ge=0, le=0.9)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class OnPolicySettings:
    """Replies the learner samples itself and rewards with the trusted reward model (learner/onpolicy.py)."""
    n: int = setting(0, "Replies sampled per logged prompt from the parent adapter; 0 = off.", ge=0, le=16)
    prompts: int = setting(8, "Most distinct logged prompts (newest first) that get n replies per run.", ge=0, le=256)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ReplaySettings:
    """Incremental runs: what older rewards a run trains on beside its new ones."""
    window: int = setting(512, "The newest this many final rewards before the learner cursor form the pool a run's "
                               "replay sample is drawn from (0 = new rewards only).", ge=0)
    ratio: float = setting(1.0, "A run trains on its new rewards plus a replay sample of at most this many older ones "
                                "per new one (seeded per run), so its cost grows with the new data, not with the "
                                "history. 0 = new rewards only.", ge=0, le=16)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class RewardModelSettings:
    """The learned reward model each run trains (learner/reward_model.py)."""
    enabled: bool = setting(True, "Train a reward model (P[liked | prompt, reply] on the frozen base model) each run: "
                                  "it rewards replies no user signalled (RewardConfig.no_signal_policy = 'model') "
                                  "and gives the gate a doubly-robust estimate.")
    window: int = setting(4096, "Newest final rewards the reward model learns from.", ge=0)
    min_auroc: float = setting(0.6, "The reward model is used only when its held-out AUROC on 'liked' is at least "
                                    "this (0.5 = chance).", ge=0, le=1)

    def __post_init__(self) -> None:
        validate(self)


# The flat keys these groups replaced (configs saved in adapter manifests before, old TOML files,
# `--set kto_beta=...`): still read, with a warning that names the new key.
FLAT_KEYS = {
    "pg_clip_eps": "pg.clip_eps", "pg_ratio_cap": "pg.ratio_cap", "pg_baseline": "pg.baseline",
    "baseline_window": "pg.baseline_window", "adv_scale": "pg.adv_scale", "pg_reduce": "pg.reduce",
    "kto_beta": "kto.beta", "kto_labels": "kto.labels", "kto_balance": "kto.balance", "dpo_beta": "dpo.beta",
    "sft_threshold": "sft.threshold", "cf_margin": "gate.cf_margin", "cf_min_ess": "gate.cf_min_ess",
    "cf_require_ess": "gate.cf_require_ess", "holdout_share": "gate.holdout_share", "onpolicy_n": "onpolicy.n",
    "onpolicy_prompts": "onpolicy.prompts", "replay_window": "replay.window", "replay_ratio": "replay.ratio",
    "reward_model_window": "reward_model.window", "reward_model_min_auroc": "reward_model.min_auroc",
}
