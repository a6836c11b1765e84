"""Reward configuration: one frozen dataclass, loaded from TOML, hashed for manifests.

Every knob of the reward function (``worker/rewards/function.py``) lives here, with a ``help`` text and
validation that names the field and the bad value. All signal and guard weights are
non-negative magnitudes; the sign of each component is fixed by what it means (a thumbs-down
is negative, a copy positive, a guard always a penalty), so a weight of 0 switches a component
off and a typo cannot silently flip a penalty into a bonus.

A TOML file holds flat top-level keys named like the fields. Keys that a file leaves out keep
their defaults, so an override file can be a single line::

    thumbs_weight = 0.5

``load_reward_config(None)`` reads the packaged ``worker/reward_default.toml``; its values are
the same as the dataclass defaults (a test keeps them in step). ``config_hash`` fingerprints the
resolved config, so every reward in the ledger and every adapter manifest can say which reward
definition produced it.
"""

import dataclasses
import difflib
import hashlib
import json
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from core.config_fields import ConfigError, setting, validate

NO_SIGNAL_POLICIES = ("exclude", "default", "model")
DEFAULT_TOML = "reward_default.toml"


class RewardConfigError(ConfigError):
    """A reward config field or file is invalid; the message names the field and the value."""


@dataclass(frozen=True)
class RewardConfig:
    # --- user signals: component = weight x unit signal (x user weight) ---
    thumbs_weight: float = setting(1.0, "Weight of the last thumbs (+1 up / -1 down) of the user.", ge=0)
    rating_weight: float = setting(1.0, "Weight of the last rating r in 1..5, scaled as (r - 3) / 2.", ge=0)
    choose_weight: float = setting(1.0, "Weight of a pick between two candidates: chosen +w, rejected -w.", ge=0)
    copy_weight: float = setting(0.5, "Bonus when the user copied the reply (counted once).", ge=0)
    regenerate_weight: float = setting(0.5, "Penalty (-w) when the user replaced the reply by regenerating.", ge=0)
    continuation_weight: float = setting(
        0.3, "Bonus when the user wrote again in the session within continuation_window_s.", ge=0
    )
    continuation_window_s: float = setting(600.0, "Seconds after a reply in which a new user message counts.", gt=0)
    dwell_weight: float = setting(
        0.1, "Weight of clip(log2(visible time / expected reading time), -1, 1).", ge=0
    )
    reading_wpm: float = setting(230.0, "Reading speed (words per minute) for the expected reading time.", gt=0)
    abandon_weight: float = setting(0.1, "Penalty (-w) when the session went idle with no action on the reply.", ge=0)
    # --- conversation signals and reason tags (worker/rewards/reasons.py) ---
    sibling_weight: float = setting(0.5, "Of several answers to one message, the one the user went on from, copied or "
                                    "rated up gets +w, each other answer -w.", ge=0)
    edited_weight: float = setting(0.5, "Penalty (-w) on the reply to a question the user then edited and sent again.", ge=0)
    tag_inaccurate_weight: float = setting(0.3, "Penalty (-w) for the reason tag 'inaccurate' (not accurate).", ge=0)
    tag_ignored_instructions_weight: float = setting(0.3, "Penalty (-w) for the reason tag 'ignored_instructions'.", ge=0)
    tag_too_long_weight: float = setting(0.1, "Penalty (-w) for the reason tag 'too_long'.", ge=0)
    tag_too_short_weight: float = setting(0.1, "Penalty (-w) for the reason tag 'too_short'.", ge=0)
    tag_refused_weight: float = setting(0.3, "Penalty (-w) for the reason tag 'refused' (refused without cause).", ge=0)
    tag_other_weight: float = setting(0.1, "Penalty (-w) for the reason tag 'other' (a thumbs-down reason).", ge=0)
    tag_accurate_weight: float = setting(0.2, "Bonus (+w) for the reason tag 'accurate'.", ge=0)
    tag_clear_weight: float = setting(0.1, "Bonus (+w) for the reason tag 'clear'.", ge=0)
    tag_helpful_weight: float = setting(0.2, "Bonus (+w) for the reason tag 'helpful'.", ge=0)
    # --- guards: automatic penalties, no user needed ---
    repetition_n: int = setting(3, "n of the word n-grams checked for repetition.", ge=1)
    repetition_threshold: float = setting(
        0.3, "Penalize when the fraction of repeated n-grams is above this (0..1).", ge=0, lt=1
    )
    repetition_weight: float = setting(0.5, "Penalty (-w) for a repetitive reply.", ge=0)
    empty_weight: float = setting(1.0, "Penalty (-w) for an empty (or whitespace-only) reply.", ge=0)
    truncated_weight: float = setting(
        0.3, "Penalty (-w) for a non-empty reply cut off (finish_reason 'length' or 'error').", ge=0
    )
    safety_words: tuple[str, ...] = setting(
        (), "An operator's extra: words or phrases (case-insensitive, whole words) that make a reply unsafe "
        "(unsafe level 1, whatever the classifier says)."
    )
    safety_weight: float = setting(
        1.0, "Penalty -w x the reply's unsafe level: the safety scorer's probability (REWARDLOOP_SAFETY_MODEL), "
        "1 for a safety word or the user's own 'unsafe' report, the highest of them.", ge=0
    )
    safety_threshold: float = setting(
        0.5, "Unsafe level (0..1] from which a reply is vetoed: its reward is capped at its safety penalty "
        "whatever its user signals, and it is never an SFT target or the chosen side of a preference pair.", gt=0, le=1
    )
    safety_veto: bool = setting(True, "Apply the veto above safety_threshold (false: the safety penalty is only summed).")
    # --- quality: the base model's reading of the reply (P[unsafe] from the server; relevance, fluency from rewards score) ---
    relevance_weight: float = setting(
        0.2, "Weight of relevance (PMI of the reply given the prompt under the base model, as a z-score against the "
        "model's own replies): w x clip(relevance / quality_scale, -1, 1).", ge=0
    )
    fluency_weight: float = setting(
        0.1, "Weight of fluency (mean token log-prob of the reply under the base model, as a z-score against the "
        "model's own replies): w x clip(fluency / quality_scale, -1, 1).", ge=0
    )
    quality_scale: float = setting(2.0, "z-score at which relevance and fluency reach their full weight (> 0).", gt=0)
    # --- finalization ---
    wait_window_s: float = setting(600.0, "Seconds after a reply ends before its reward is final.", gt=0)
    no_signal_policy: str = setting(
        "exclude", "What to do with a reply without user signal: 'exclude', 'default' (default_reward) or "
        "'model' (state 'unscored': the learner rewards it with its reward model, scaled by "
        "model_reward_weight, when that model is trusted; else it is left out).", choices=NO_SIGNAL_POLICIES
    )
    model_reward_weight: float = setting(0.5, "Scale (0..1) of reward-model rewards under no_signal_policy = 'model': "
                                         "below an observed signal's.", ge=0, le=1)
    default_reward: float = setting(0.0, "Reward given under no_signal_policy = 'default' (-1..1).", ge=-1, le=1)
    # --- training batches and abuse ---
    max_user_share: float = setting(0.25, "Largest share of one training batch from one user (0..1].", gt=0, le=1)
    anomaly_min_events: int = setting(5, "How many of a user's last votes must look automated to flag them.", ge=2)
    anomaly_fast_s: float = setting(1.0, "A vote this many seconds or fewer after the reply ended is 'fast'.", ge=0)
    anomaly_weight: float = setting(0.25, "User weight (0..1) for a flagged user's signals.", ge=0, le=1)
    unsafe_voter_min_events: int = setting(
        5, "A user's positive signals (thumbs up, rating >= 4, chosen, copy) on at least this many of their "
        "recent replies are needed before they can be flagged as liking unsafe replies.", ge=1
    )
    unsafe_voter_share: float = setting(
        0.5, "Flag a user when more than this share (0..1) of their recent positively-signalled replies were "
        "unsafe (level >= safety_threshold).", ge=0, lt=1
    )
    unsafe_voter_weight: float = setting(0.25, "User weight (0..1) for a user flagged as liking unsafe replies.", ge=0, le=1)

    def __post_init__(self) -> None:
        validate(self, error=RewardConfigError)
        # words match case-insensitively, so the config (and its hash) holds them lowercased
        object.__setattr__(self, "safety_words", tuple(w.strip().lower() for w in self.safety_words))


def default_config_text() -> str:
    """The packaged default TOML, as text."""
    try:
        return resources.files("worker").joinpath(DEFAULT_TOML).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):  # running from a plain source tree
        return (Path(__file__).parent / DEFAULT_TOML).read_text(encoding="utf-8")


def config_from_mapping(data: dict, source: str = "<mapping>") -> RewardConfig:
    """Build a config from flat keys; unknown keys are errors (a typo must not be ignored)."""
    known = {f.name for f in dataclasses.fields(RewardConfig)}
    for key in data:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise RewardConfigError(f"unknown reward config key {key!r} in {source}{hint}")
    return RewardConfig(**data)


def load_reward_config(path: "str | Path | None" = None) -> RewardConfig:
    """Read a reward config TOML; None reads the packaged defaults. Missing keys keep defaults."""
    if path is None:
        text, source = default_config_text(), DEFAULT_TOML
    else:
        text, source = Path(path).read_text(encoding="utf-8"), str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RewardConfigError(f"{source} is not valid TOML: {e}") from e
    return config_from_mapping(data, source)


def config_dict(cfg: RewardConfig) -> dict:
    """The resolved config as plain JSON-able data (saved next to rewards and in manifests)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def config_hash(cfg: RewardConfig) -> str:
    """First 16 hex chars of sha256 over canonical JSON (sorted keys, no spaces) of the config."""
    blob = json.dumps(config_dict(cfg), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
