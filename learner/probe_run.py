"""The safety probe check, run: the parent and the new version answer the shipped probe set, the
safety scorer and the base model's relevance read the replies, learner/probe_check.py decides.

Both versions answer greedily, with the same prompts in the same batches (the probe's question in
the chat template, as core/quality.py scores it), so reply i of the one pairs with reply i of the
other. The parent is the run's model with the parent's adapter weights put back (the gate's
`parent_weights`; a fresh adapter starts at zero, so a run from base compares against the base
model). Relevance is scored with the adapter off (the base model), as z-scores against the base
model's own replies (core/quality.py's calibration, computed once and cached in the models folder).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Sequence

import torch

from core.quality import load_or_calibrate, prompt_ids, score_pairs
from core.safety import SafetyScorer, load_safety_scorer
from learner import gate
from learner.probe_check import KINDS, Probe, SafetyProbeSettings, decide, load_probes

log = logging.getLogger(__name__)

_SCORERS: dict[tuple[str, str], SafetyScorer] = {}
_SCORERS_LOCK = threading.Lock()
EXAMPLES = 3        # unsafe replies of the new version kept in the manifest, for the operator to read
EXAMPLE_CHARS = 160


def scorer_for(spec: str, device: str = "cpu") -> SafetyScorer:
    """REWARDLOOP_SAFETY_MODEL's scorer, loaded once per process (a model-backed one loads weights)."""
    with _SCORERS_LOCK:
        key = (spec or "", device)
        if key not in _SCORERS:
            _SCORERS[key] = load_safety_scorer(spec, device)
        return _SCORERS[key]


@torch.no_grad()
def answer(policy, probes: Sequence[Probe], cfg: SafetyProbeSettings) -> list[str]:
    """Greedy replies of `policy.model` as it is now to each probe, in batches of similar length
    (left-padded), cut at a stop token or cfg.max_new_tokens."""
    model, tok, pad = policy.model, policy.tokenizer, policy.pad_id
    rows = [prompt_ids(tok, p.prompt) for p in probes]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    texts: list[str] = [""] * len(rows)
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        width = max(len(rows[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(rows[i])) + rows[i] for i in idx], device=policy.device)  # [B, W]
        mask = torch.tensor([[0] * (width - len(rows[i])) + [1] * len(rows[i]) for i in idx], device=policy.device)
        gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=cfg.max_new_tokens,
                             pad_token_id=pad, eos_token_id=sorted(policy.stop_ids) or None,
                             temperature=None, top_p=None, top_k=None)                              # [B, W+T]
        for i, row in zip(idx, gen):
            texts[i] = tok.decode(row[width:], skip_special_tokens=True)
    return texts


def _base_model(model):
    """The model with its adapter off (a context manager), or as it is when it has none."""
    import contextlib
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


@dataclass
class Reading:
    """One version's answers to the probe set: P[unsafe] of each reply, the relevance z of each
    ordinary probe's reply (None: empty), and the replies (None when read from a manifest)."""
    p_unsafe: list[float]
    relevance: list[float | None]
    replies: list[str] | None = None

    def unsafe(self, threshold: float) -> list[bool]:
        return [u >= threshold for u in self.p_unsafe]


def read(policy, probes: Sequence[Probe], cfg: SafetyProbeSettings, scorer: SafetyScorer, calibration) -> Reading:
    """The model as it is now answers the probes; the scorer and the base model read the replies."""
    replies = answer(policy, probes, cfg)
    p_unsafe = scorer.unsafe_probability(replies, [p.prompt for p in probes])
    ordinary = [(p.prompt, r) for p, r in zip(probes, replies) if p.kind == "ordinary"]
    with _base_model(policy.model):
        raw = score_pairs(policy.model, policy.tokenizer, ordinary, policy.device)
    return Reading([float(u) for u in p_unsafe], [None if s is None else calibration.relevance(s) for s in raw],
                   replies)


def recorded(parent_probe: dict | None, key: dict, n: int) -> Reading | None:
    """The parent's own reading, from the probe section of its manifest (its run read the same
    weights), when it was taken the same way (`key`: probe set, scorer, model, decoding,
    calibration); else None and the parent answers again."""
    if not isinstance(parent_probe, dict) or parent_probe.get("key") != key:
        return None
    rec = parent_probe.get("per_probe") or {}
    if len(rec.get("p_unsafe") or []) != n:
        return None
    return Reading(list(rec["p_unsafe"]), list(rec["relevance"]))


def _sig(x):
    return float(f"{x:.4g}") if isinstance(x, float) else x


def check(policy, parent_view: gate.ParentView, cfg: SafetyProbeSettings, *, parent: str, scorer: SafetyScorer,
          cache_dir: Path, parent_probe: dict | None = None, probes_text: str | None = None) -> dict:
    """Run the probe set on the new version (the model as it is now) and on the parent (or take
    the parent's reading from `parent_probe`, its manifest's probe section); the figures and the
    decision, as the manifest's `probe` section."""
    started = time.time()
    probes, digest = load_probes(probes_text)
    with _base_model(policy.model):
        calibration = load_or_calibrate(policy.model, policy.tokenizer, policy.device, policy.model_id, cache_dir)
    key = {"probe_set": digest, "scorer": scorer.name, "model_id": policy.model_id, "dtype": str(policy.dtype),
           "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
           "calibration": [_sig(calibration.pmi_mean), _sig(calibration.pmi_std)]}
    seconds = {"calibration": time.time() - started}
    new = read(policy, probes, cfg, scorer, calibration)
    seconds["new"] = time.time() - started - seconds["calibration"]
    old = recorded(parent_probe, key, len(probes))
    source = "from its manifest" if old is not None else "answered now"
    if old is None:
        with gate.parent_weights(policy.model, parent_view):
            old = read(policy, probes, cfg, scorer, calibration)
    seconds["parent"] = time.time() - started - seconds["calibration"] - seconds["new"]
    seconds["total"] = time.time() - started
    verdict = decide(old.unsafe(cfg.unsafe_threshold), new.unsafe(cfg.unsafe_threshold), old.relevance,
                     new.relevance, cfg)
    log.info("safety probe: %s (%.1f s; the parent's reading: %s)", verdict.reason, seconds["total"], source)
    details = _details(probes, new, old, cfg.unsafe_threshold)
    if details["unsafe_examples"]:
        log.info("safety probe: unsafe replies of the new version, e.g. %s", details["unsafe_examples"])
    return {**{k: _sig(v) for k, v in dataclasses.asdict(verdict).items()}, "parent": parent,
            "parent_reading": source, "n": len(probes), "probe_set": digest, "scorer": scorer.name,
            **details, "settings": dataclasses.asdict(cfg), "key": key,
            "seconds": {k: round(v, 2) for k, v in seconds.items()}}


def _details(probes: Sequence[Probe], new: Reading, old: Reading, threshold: float) -> dict:
    """Per kind counts, mean P[unsafe], a few unsafe replies, and the new version's own reading
    (the next run, continuing this version, compares against it without answering again)."""
    bad_new, bad_old = new.unsafe(threshold), old.unsafe(threshold)
    by_kind = {kind: {"n": sum(1 for p in probes if p.kind == kind),
                      "unsafe_parent": sum(u for p, u in zip(probes, bad_old) if p.kind == kind),
                      "unsafe_new": sum(u for p, u in zip(probes, bad_new) if p.kind == kind)} for kind in KINDS}
    examples = [{"probe": p.id, "p_unsafe": round(u, 3), "reply": r[:EXAMPLE_CHARS]}
                for p, r, u, bad in zip(probes, new.replies or [], new.p_unsafe, bad_new) if bad][:EXAMPLES]
    return {"by_kind": by_kind, "mean_p_unsafe_parent": round(fmean(old.p_unsafe), 4) if old.p_unsafe else None,
            "mean_p_unsafe_new": round(fmean(new.p_unsafe), 4) if new.p_unsafe else None,
            "unsafe_examples": examples,
            "per_probe": {"p_unsafe": new.p_unsafe, "relevance": new.relevance}}
