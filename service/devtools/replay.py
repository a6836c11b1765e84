"""Replay a logged session against an adapter version, and re-score its feedback under
another reward config.

Replay: each logged reply is generated again from its logged prompt ids (the context exactly as
served: system prompt, the turns that fit, the chat template) by an `OfflineModel`, with the
reply's own sampling params and seed unless told otherwise. With the version and seed that
served it, the result is the served reply token for token. Next to it: the log-probability of
the served reply under the replay version (same temperature/top-p processing as at sampling)
and its behavior log-probability as logged, whose difference is the log importance weight.

Re-scoring is pure: worker.rewards.compute_reward on the signals the workers stored.
"""
from __future__ import annotations

import dataclasses
import math
import secrets

from core import records
from core.sampling import SamplingParams


def served_params(rec: dict) -> SamplingParams:
    return records.sampling_params(rec.get("params"))


def replayable(rec: dict) -> bool:
    return not rec.get("missing") and isinstance(rec.get("prompt_ids"), list) and bool(rec["prompt_ids"])


def replay_session(session: dict, model, version: str, seed: int | None = None, greedy: bool = False) -> list[dict]:
    """One row per logged reply (session detail with raw=True), in the order generated."""
    rows = []
    cache_session = f"replay-{secrets.token_hex(4)}"   # this replay's own prefix cache entries
    recs = [r for r in session["replies"] if replayable(r)]
    scores = model.seq_logps([(r["prompt_ids"], r.get("token_ids") or [], served_params(r)) for r in recs], version)
    for rec, logp_v in zip(recs, scores):
        served = served_params(rec)
        params = served
        if seed is not None:
            params = dataclasses.replace(params, seed=seed)
        if greedy:
            params = dataclasses.replace(params, temperature=0.0)
        reused, peak = rec.get("prefix_reused"), rec.get("peak_rows")
        known = isinstance(reused, int) and isinstance(peak, int)
        out = model.generate(rec["prompt_ids"], params, version, session=cache_session,
                             prefix_limit=reused if known else 0)
        behavior = sum(rec.get("logprobs") or [])
        same_setup = str(rec.get("adapter_version")) == version and params == served
        rows.append({
            "reply_id": rec["reply_id"], "turn": rec.get("turn"), "in_history": rec.get("in_history"),
            "user_text": rec.get("user_text", ""),
            "served": {"text": rec.get("text", ""), "adapter_version": rec.get("adapter_version"),
                       "token_ids": rec.get("token_ids") or [], "params": served.to_dict(),
                       "finish_reason": rec.get("finish_reason"), "behavior_logp": behavior,
                       "prefix_reused": reused, "peak_rows": peak},
            "replay": {"text": out.text, "adapter_version": version, "token_ids": out.token_ids,
                       "params": params.to_dict(), "finish_reason": out.finish_reason,
                       "logp": sum(out.logprobs)},
            "identical": out.token_ids == (rec.get("token_ids") or []),
            "same_setup": same_setup,
            # the server's computation rebuilt (None: the record does not say how it was computed)
            "same_path": (peak == 1 and reused == out.prefix_reused) if known else None,
            "served_logp_under_replay": logp_v,
            "log_weight": (logp_v - behavior) if not served.greedy else None,
        })
    return rows


def rescore_session(session: dict, cfg) -> list[dict]:
    """Each reply's reward under reward config `cfg` next to the logged one (replies whose
    ledger entry exists; signals as the workers stored them)."""
    from worker.rewards.config import config_hash
    from worker.rewards.function import ReplyFacts, compute_reward, finalize_state
    rows, chash = [], config_hash(cfg)
    for rec in session["replies"]:
        logged = rec.get("reward")
        if rec.get("missing") or not logged:
            continue
        facts = ReplyFacts(reply_id=rec["reply_id"], text=rec.get("text", ""), n_tokens=int(rec.get("n_tokens") or 0),
                           finish_reason=rec.get("finish_reason") or "stop", ended_at=float(rec.get("ended_at") or 0),
                           user_id=rec.get("user_id", ""), adapter_version=str(rec.get("adapter_version", "")))
        weight = logged.get("user_weight")
        weight = 1.0 if weight is None or not math.isfinite(weight) else weight
        new = compute_reward(facts, logged.get("signals", []), cfg, user_weight=weight)
        state, reward = finalize_state(new.has_signal, cfg, new.total)
        old = logged.get("reward")
        rows.append({
            "reply_id": rec["reply_id"], "turn": rec.get("turn"), "text": rec.get("text", ""),
            "logged": {"state": logged.get("state"), "reward": old, "components": logged.get("components", {}),
                       "config_hash": logged.get("config_hash")},
            "rescored": {"state": state, "reward": reward, "components": new.components, "config_hash": chash,
                         "explain": new.explain()},
            "difference": (reward - old) if reward is not None and old is not None else None,
        })
    return rows
