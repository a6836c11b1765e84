"""`rewardloop evaluate`: a counterfactual estimate of an adapter version's mean reward on
logged replies, without serving it.

For each logged reply with a final reward (newest first, at most `limit`, finalized since
`since`): its sequence log-prob under the version (same temperature/top-p processing as when it
was sampled), minus the behavior log-prob recorded when it was served, gives the importance
weight; learner.counterfactual.estimate -- the code the learner's gate uses -- turns weights and
rewards into IPS and SNIPS with bootstrap intervals and the effective sample size, with a
warning when that is too small to trust. Greedy replies (no sampling probability), empty
replies, opted-out and forgotten users are left out, and counted.
"""
from __future__ import annotations

import math
from collections import Counter

from learner import counterfactual
from service.devtools.replay import served_params
from service.devtools.sessions import SessionLog


def logged_samples(log: SessionLog, since: float | None, limit: int) -> tuple[list[dict], Counter]:
    """[{reply_id, reward, prompt_ids, token_ids, params, behavior_logp, adapter_version}], skipped."""
    skipped: Counter = Counter()
    users: dict[str, str | None] = {}
    out = []
    for e in log.final_rewards(since, limit):
        uid = e.get("user_id", "")
        if uid not in users:
            users[uid] = log.excluded(uid)
        if users[uid] or e.get("opt_out", "0") not in ("", "0"):
            skipped["opted_out_or_forgotten"] += 1
            continue
        rec = log.reply_raw(e["reply_id"])
        if rec is None or not isinstance(rec.get("token_ids"), list) or not isinstance(rec.get("prompt_ids"), list):
            skipped["missing_reply"] += 1
            continue
        if int(rec.get("opt_out") or 0):
            skipped["opted_out_or_forgotten"] += 1
            continue
        params = served_params(rec)
        if params.greedy:
            skipped["greedy"] += 1
            continue
        if not rec["token_ids"]:
            skipped["empty"] += 1
            continue
        behavior = sum(rec.get("logprobs") or [])
        reward = float(e["reward"])
        if not (math.isfinite(behavior) and math.isfinite(reward)):
            skipped["not_finite"] += 1
            continue
        out.append({"reply_id": e["reply_id"], "reward": reward, "prompt_ids": rec["prompt_ids"],
                    "token_ids": rec["token_ids"], "params": params, "behavior_logp": behavior,
                    "adapter_version": str(rec.get("adapter_version", ""))})
    return out, skipped


def evaluate_version(log: SessionLog, model, version: str, *, since: float | None = None, limit: int = 1000,
                     min_ess: float = 30, n_boot: int = 1000, clip: float | None = None) -> dict:
    samples, skipped = logged_samples(log, since, limit)
    result = {"version": version, "n": len(samples), "skipped": dict(skipped),
              "served_by": dict(Counter(s["adapter_version"] for s in samples))}
    if not samples:
        result["warning"] = ("no logged replies with a final reward to evaluate on: chat, give feedback, let the "
                             "workers finalize rewards (or widen --since / --limit)")
        return result
    target = model.seq_logps([(s["prompt_ids"], s["token_ids"], s["params"]) for s in samples], version)
    behavior = [s["behavior_logp"] for s in samples]
    rewards = [s["reward"] for s in samples]
    est = counterfactual.estimate(rewards, target, behavior, min_ess=min_ess, clip=clip, n_boot=n_boot)
    weights = counterfactual.importance_weights(target, behavior, clip=clip)
    result.update(ips=est.ips, ips_ci=list(est.ips_ci), snips=est.snips, snips_ci=list(est.snips_ci), ess=est.ess,
                  logged_mean=est.logged_mean, warning=est.warning,
                  weights={"min": float(weights.min()), "max": float(weights.max()), "mean": float(weights.mean())},
                  replies=[{"reply_id": s["reply_id"], "reward": s["reward"], "served_by": s["adapter_version"],
                            "behavior_logp": b, "target_logp": t, "weight": float(w)}
                           for s, b, t, w in zip(samples, behavior, target, weights)])
    return result
