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
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

NO_SIGNAL_POLICIES = ("exclude", "default", "model")
DEFAULT_TOML = "reward_default.toml"


class RewardConfigError(ValueError):
    """A reward config field or file is invalid; the message names the field and the value."""


def _f(default, help: str):
    """A dataclass field with its ``help`` text (defaults are immutable, so sharing them is safe)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RewardConfig:
    # --- user signals: component = weight x unit signal (x user weight) ---
    thumbs_weight: float = _f(1.0, "Weight of the last thumbs (+1 up / -1 down) of the user.")
    rating_weight: float = _f(1.0, "Weight of the last rating r in 1..5, scaled as (r - 3) / 2.")
    choose_weight: float = _f(1.0, "Weight of a pick between two candidates: chosen +w, rejected -w.")
    copy_weight: float = _f(0.5, "Bonus when the user copied the reply (counted once).")
    regenerate_weight: float = _f(0.5, "Penalty (-w) when the user replaced the reply by regenerating.")
    continuation_weight: float = _f(
        0.3, "Bonus when the user wrote again in the session within continuation_window_s."
    )
    continuation_window_s: float = _f(600.0, "Seconds after a reply in which a new user message counts.")
    dwell_weight: float = _f(
        0.1, "Weight of clip(log2(visible time / expected reading time), -1, 1)."
    )
    reading_wpm: float = _f(230.0, "Reading speed (words per minute) for the expected reading time.")
    abandon_weight: float = _f(0.1, "Penalty (-w) when the session went idle with no action on the reply.")
    # --- conversation signals and reason tags (worker/rewards/reasons.py) ---
    sibling_weight: float = _f(0.5, "Of several answers to one message, the one the user went on from, copied or "
                                    "rated up gets +w, each other answer -w.")
    edited_weight: float = _f(0.5, "Penalty (-w) on the reply to a question the user then edited and sent again.")
    tag_inaccurate_weight: float = _f(0.3, "Penalty (-w) for the reason tag 'inaccurate' (not accurate).")
    tag_ignored_instructions_weight: float = _f(0.3, "Penalty (-w) for the reason tag 'ignored_instructions'.")
    tag_too_long_weight: float = _f(0.1, "Penalty (-w) for the reason tag 'too_long'.")
    tag_too_short_weight: float = _f(0.1, "Penalty (-w) for the reason tag 'too_short'.")
    tag_refused_weight: float = _f(0.3, "Penalty (-w) for the reason tag 'refused' (refused without cause).")
    tag_other_weight: float = _f(0.1, "Penalty (-w) for the reason tag 'other' (a thumbs-down reason).")
    tag_accurate_weight: float = _f(0.2, "Bonus (+w) for the reason tag 'accurate'.")
    tag_clear_weight: float = _f(0.1, "Bonus (+w) for the reason tag 'clear'.")
    tag_helpful_weight: float = _f(0.2, "Bonus (+w) for the reason tag 'helpful'.")
    # --- guards: automatic penalties, no user needed ---
    repetition_n: int = _f(3, "n of the word n-grams checked for repetition.")
    repetition_threshold: float = _f(
        0.3, "Penalize when the fraction of repeated n-grams is above this (0..1)."
    )
    repetition_weight: float = _f(0.5, "Penalty (-w) for a repetitive reply.")
    empty_weight: float = _f(1.0, "Penalty (-w) for an empty (or whitespace-only) reply.")
    truncated_weight: float = _f(
        0.3, "Penalty (-w) for a non-empty reply cut off (finish_reason 'length' or 'error')."
    )
    safety_words: tuple[str, ...] = _f(
        (), "An operator's extra: words or phrases (case-insensitive, whole words) that make a reply unsafe "
        "(unsafe level 1, whatever the classifier says)."
    )
    safety_weight: float = _f(
        1.0, "Penalty -w x the reply's unsafe level: the safety scorer's probability (REWARDLOOP_SAFETY_MODEL), "
        "1 for a safety word or the user's own 'unsafe' report, the highest of them."
    )
    safety_threshold: float = _f(
        0.5, "Unsafe level (0..1] from which a reply is vetoed: its reward is capped at its safety penalty "
        "whatever its user signals, and it is never an SFT target or the chosen side of a preference pair."
    )
    safety_veto: bool = _f(True, "Apply the veto above safety_threshold (false: the safety penalty is only summed).")
    # --- quality: the base model's reading of the reply (scored by the server at the reply's end) ---
    relevance_weight: float = _f(
        0.2, "Weight of relevance (PMI of the reply given the prompt under the base model, as a z-score against the "
        "model's own replies): w x clip(relevance / quality_scale, -1, 1)."
    )
    fluency_weight: float = _f(
        0.1, "Weight of fluency (mean token log-prob of the reply under the base model, as a z-score against the "
        "model's own replies): w x clip(fluency / quality_scale, -1, 1)."
    )
    quality_scale: float = _f(2.0, "z-score at which relevance and fluency reach their full weight (> 0).")
    # --- finalization ---
    wait_window_s: float = _f(600.0, "Seconds after a reply ends before its reward is final.")
    no_signal_policy: str = _f(
        "exclude", "What to do with a reply without user signal: 'exclude', 'default' (default_reward) or "
        "'model' (state 'unscored': the learner rewards it with its reward model, scaled by "
        "model_reward_weight, when that model is trusted; else it is left out)."
    )
    model_reward_weight: float = _f(0.5, "Scale (0..1) of reward-model rewards under no_signal_policy = 'model': "
                                         "below an observed signal's.")
    default_reward: float = _f(0.0, "Reward given under no_signal_policy = 'default' (-1..1).")
    # --- training batches and abuse ---
    max_user_share: float = _f(0.25, "Largest share of one training batch from one user (0..1].")
    anomaly_min_events: int = _f(5, "How many of a user's last votes must look automated to flag them.")
    anomaly_fast_s: float = _f(1.0, "A vote this many seconds or fewer after the reply ended is 'fast'.")
    anomaly_weight: float = _f(0.25, "User weight (0..1) for a flagged user's signals.")
    unsafe_voter_min_events: int = _f(
        5, "A user's positive signals (thumbs up, rating >= 4, chosen, copy) on at least this many of their "
        "recent replies are needed before they can be flagged as liking unsafe replies."
    )
    unsafe_voter_share: float = _f(
        0.5, "Flag a user when more than this share (0..1) of their recent positively-signalled replies were "
        "unsafe (level >= safety_threshold)."
    )
    unsafe_voter_weight: float = _f(0.25, "User weight (0..1) for a user flagged as liking unsafe replies.")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f, getattr(self, f.name)))
        _check_ranges(self)


def _bad(name: str, value, want: str) -> RewardConfigError:
    return RewardConfigError(f"RewardConfig.{name} must be {want}; got {value!r}")


def _coerce(f: dataclasses.Field, value):
    """Normalize TOML-ish input (int for float, list for tuple) and reject wrong types."""
    name = f.name
    if f.type is float:
        # bool is an int subclass; `thumbs_weight = true` is a typo, not 1.0
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(name, value, "a number")
        if not math.isfinite(value):
            raise _bad(name, value, "a finite number")
        return float(value)
    if f.type is bool:
        if not isinstance(value, bool):
            raise _bad(name, value, "true or false")
        return value
    if f.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(name, value, "an integer")
        return value
    if f.type is str:
        if not isinstance(value, str):
            raise _bad(name, value, "a string")
        return value
    # tuple[str, ...]: the only collection field is a word list
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _bad(name, value, "a list of strings")
    words = []
    for w in value:
        if not isinstance(w, str) or not w.strip():
            raise _bad(name, value, "a list of non-empty strings")
        words.append(w.strip().lower())
    return tuple(words)


def _check_ranges(cfg: RewardConfig) -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name.endswith("_weight") and v < 0:
            raise _bad(f.name, v, ">= 0 (weights are magnitudes; the sign is fixed, use 0 to disable)")
    for name in ("continuation_window_s", "reading_wpm", "wait_window_s"):
        if getattr(cfg, name) <= 0:
            raise _bad(name, getattr(cfg, name), "> 0")
    if cfg.anomaly_fast_s < 0:
        raise _bad("anomaly_fast_s", cfg.anomaly_fast_s, ">= 0")
    if cfg.repetition_n < 1:
        raise _bad("repetition_n", cfg.repetition_n, ">= 1")
    if not 0.0 <= cfg.repetition_threshold < 1.0:
        raise _bad("repetition_threshold", cfg.repetition_threshold, "in [0, 1)")
    if cfg.no_signal_policy not in NO_SIGNAL_POLICIES:
        raise _bad("no_signal_policy", cfg.no_signal_policy, "one of " + ", ".join(map(repr, NO_SIGNAL_POLICIES)))
    if not 0.0 <= cfg.model_reward_weight <= 1.0:
        raise _bad("model_reward_weight", cfg.model_reward_weight, "in [0, 1]")
    if not -1.0 <= cfg.default_reward <= 1.0:
        raise _bad("default_reward", cfg.default_reward, "in [-1, 1]")
    if not 0.0 < cfg.max_user_share <= 1.0:
        raise _bad("max_user_share", cfg.max_user_share, "in (0, 1]")
    if cfg.anomaly_min_events < 2:
        raise _bad("anomaly_min_events", cfg.anomaly_min_events, ">= 2 (one vote is no pattern)")
    for name in ("anomaly_weight", "unsafe_voter_weight"):
        if getattr(cfg, name) > 1.0:
            raise _bad(name, getattr(cfg, name), "in [0, 1] (it only ever lowers a user's say)")
    if not 0.0 < cfg.safety_threshold <= 1.0:
        raise _bad("safety_threshold", cfg.safety_threshold, "in (0, 1]")
    if not cfg.quality_scale > 0:
        raise _bad("quality_scale", cfg.quality_scale, "> 0")
    if cfg.unsafe_voter_min_events < 1:
        raise _bad("unsafe_voter_min_events", cfg.unsafe_voter_min_events, ">= 1")
    if not 0.0 <= cfg.unsafe_voter_share < 1.0:
        raise _bad("unsafe_voter_share", cfg.unsafe_voter_share, "in [0, 1)")


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
