"""Reward-model features, computed once per reply and base model, kept on disk.

The reward model reads the frozen base model (learner/reward_model.py `extract_features`): a
reply's features never change for one base model, so a run extracts only the replies it has not
seen and reads the rest back. Without it the reward model re-read every reply of its window
before every run (1-2 min on 2 cores for a few hundred replies, growing with the history).

Disk: DATA_DIR/reward_model/features/<key>/ holds chunk files (`chunk-<n>.npz`: reply ids and a
float32 [N, D] array), one per run that extracted something; the key is a hash of the base model
id and the reply-token cut. When there are more than MAX_CHUNKS, they are compacted into one
holding the newest `keep` replies. A chunk is written to a temporary name and renamed.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAX_CHUNKS = 16


class FeatureCache:
    def __init__(self, data_dir: Path, model_id: str, max_reply_tokens: int, keep: int):
        key = hashlib.sha256(f"{model_id}\0{max_reply_tokens}".encode()).hexdigest()[:16]
        self.root = Path(data_dir) / "reward_model" / "features" / key
        self.max_reply_tokens, self.keep = max_reply_tokens, keep
        self.rows: dict[str, np.ndarray] = {}
        self.extracted = 0      # replies this cache had to run through the model
        self.hits = 0           # replies read back
        self._new: dict[str, np.ndarray] = {}
        self._load()

    def _chunks(self) -> list[Path]:
        return sorted(self.root.glob("chunk-*.npz"), key=lambda p: int(p.stem.split("-")[1]))

    def _load(self) -> None:
        for path in self._chunks():
            try:
                with np.load(path, allow_pickle=False) as z:
                    self.rows.update(zip(z["ids"].tolist(), z["feats"]))
            except (OSError, ValueError, KeyError) as exc:   # a damaged chunk: recompute its replies
                log.warning("reward-model feature cache: ignoring %s (%s)", path, exc)

    def features(self, policy, items: list[tuple[str, list[int], list[int]]]) -> np.ndarray:
        """[N, D] features of (reply id, prompt ids, reply ids), in order; extracts the missing
        ones with `policy` (its base model, adapter off) and remembers them."""
        from learner.reward_model import extract_features
        missing = [(rid, p, r) for rid, p, r in dict((i[0], i) for i in items).values() if rid not in self.rows]
        if missing:
            feats = extract_features(policy.model, [(p, r) for _, p, r in missing], policy.device,
                                     self.max_reply_tokens)
            for (rid, _, _), row in zip(missing, feats.astype(np.float32)):
                self.rows[rid] = self._new[rid] = row
        self.extracted += len(missing)
        self.hits += len(items) - len(missing)
        if not items:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self.rows[rid] for rid, _, _ in items])

    def save(self) -> None:
        """Write what this run extracted as one chunk; compact when the chunks pile up."""
        if not self._new:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        chunks = self._chunks()
        number = int(chunks[-1].stem.split("-")[1]) + 1 if chunks else 0
        self._write(number, self._new)
        self._new = {}
        if len(chunks) + 1 > MAX_CHUNKS:
            newest = dict(list(self.rows.items())[-self.keep:])
            self._write(number + 1, newest)
            for old in chunks + [self.root / f"chunk-{number}.npz"]:
                old.unlink(missing_ok=True)

    def _write(self, number: int, rows: dict[str, np.ndarray]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=self.root)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, ids=np.array(list(rows), dtype=str), feats=np.stack(list(rows.values())))
        os.rename(tmp, self.root / f"chunk-{number}.npz")
