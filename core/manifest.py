"""AdapterManifest: manifest.json of one adapter version folder, the record the learner writes
when it commits a version (learner/run_stages.py, learner/import_adapter.py) and the registry,
`adapters show` and the next run (its parent's lineage and safety probe) read back. Pure. (The
hot-swap validation, core/adapter_format.py, reads only its sha256 and base_model.)

The top-level fields are typed; the sections a run reports (dataset, training, cost, gate,
probe, reward_model, chat_first, config) stay JSON objects, documented where they are built
(learner/run_stages.py). Reading is lenient like core/records.py: keys this class does not name
(an imported adapter's `imported_from`, a newer writer's fields) are kept in `extra` and written
back, so a manifest read and written again is the manifest it was.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import ClassVar

STATES = ("published", "rejected")
# the safety probe's figures a version's registry entry keeps (the manifest has them all)
PROBE_FIGURES = ("decision", "reason", "unsafe_parent", "unsafe_new", "p_value", "relevance_parent", "relevance_new",
                 "n", "parent")


class ManifestInvalid(ValueError):
    """manifest.json does not describe a version: the message names the field."""


@dataclass(frozen=True, kw_only=True)
class AdapterManifest:
    SCHEMA_VERSION: ClassVar[int] = 1

    version: int                          # the version number (>= 1)
    base_model: str                       # the model id the adapter was trained on (a server refuses others)
    state: str                            # published | rejected (by the gate)
    parent: str = "base"                  # the version it continued from ('base' = the base model)
    parent_choice: str = ""               # why that parent (the canary, the stable, ...)
    reason: str = ""                      # why rejected, or where it was imported from
    created: float = 0.0                  # epoch s
    sha256: str = ""                      # of adapter_model.safetensors (filled in by Registry.stage)
    train_seconds: float | None = None    # the whole run (load, reward model, training, gate, probe)
    samples_used: int = 0                 # samples trained on
    holdout: int = 0                      # samples the gate held out
    reward_config_hash: str = ""          # worker/rewards/config.py config_hash of the rewards used
    stream_range: list | None = None      # [first, last] `rewards` stream id the run read
    dataset: dict | None = None           # selection counts (learner/samples.py)
    training: dict | None = None          # loss, steps, KL control, trust region, lineage reward mean
    cost: dict | None = None              # counts: samples, optimizer steps, forward passes, features
    gate: dict | None = None              # the gate's verdict and statistics
    probe: dict | None = None             # the safety probe (learner/probe_run.py)
    reward_model: dict | None = None      # the reward model's metrics and feature cache
    chat_first: dict | None = None        # how often the run yielded to chat
    config: dict | None = None            # TrainConfig.to_dict() of the run
    torch: str = ""                       # torch version that trained it
    extra: dict = field(default_factory=dict)   # keys this class does not name, kept as read

    def __post_init__(self):
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ManifestInvalid(f"manifest version must be an integer >= 1, got {self.version!r}")
        if self.state not in STATES:
            raise ManifestInvalid(f"manifest state must be one of {STATES}, got {self.state!r}")
        if not isinstance(self.base_model, str) or not self.base_model:
            raise ManifestInvalid(f"manifest base_model must name a model, got {self.base_model!r}")
        if not (isinstance(self.created, (int, float)) and math.isfinite(self.created)):
            raise ManifestInvalid(f"manifest created must be a finite epoch time, got {self.created!r}")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    def to_dict(self) -> dict:
        """The JSON object of manifest.json (None sections left out, unknown keys kept)."""
        out = {k: getattr(self, k) for k in self.names() if getattr(self, k) is not None}
        return {**self.extra, **out, "schema_version": self.SCHEMA_VERSION}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, d: dict) -> AdapterManifest:
        if not isinstance(d, dict):
            raise ManifestInvalid(f"a manifest is a JSON object, got {type(d).__name__}")
        names = set(cls.names())
        known = {k: v for k, v in d.items() if k in names}
        if "parent" in known:
            known["parent"] = "base" if known["parent"] in (None, "") else str(known["parent"])
        extra = {k: v for k, v in d.items() if k not in names and k != "schema_version"}
        missing = [k for k in ("version", "base_model", "state") if k not in known]
        if missing:
            raise ManifestInvalid(f"manifest lacks {', '.join(missing)}")
        try:
            return cls(**known, extra=extra)
        except TypeError as exc:   # a field of the wrong shape
            raise ManifestInvalid(f"manifest does not parse: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> AdapterManifest:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ManifestInvalid(f"manifest.json is not JSON ({exc})") from None

    def registry_entry(self, path: str) -> dict:
        """What the registry's `versions` map keeps of it (for /ops and `adapters list`, no disk read)."""
        entry = {"version": self.version, "state": self.state, "parent": self.parent, "sha256": self.sha256,
                 "path": path, "created": self.created, "reason": self.reason, "samples": self.samples_used}
        if isinstance(self.probe, dict):
            entry["probe"] = {k: self.probe.get(k) for k in PROBE_FIGURES}
        return entry
