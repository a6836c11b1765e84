"""The reward model's training data: the newest final, user-signalled replies and what each
user did (the ledger's reward components), read from Redis. I/O only; the model itself is in
learner/reward_model.py."""
from __future__ import annotations

import json
import logging

import numpy as np
import redis

from core.keys import Keys
from learner.dataset import load_reply
from learner.reward_model import SIGNALS, RewardModel, RewardModelConfig, extract_features, fit, labels_from_components

log = logging.getLogger(__name__)


def labelled_replies(r: redis.Redis, keys: Keys, window: int, max_tokens: int):
    """([(prompt ids, reply ids)], {signal: [N] 0/1}, [reply ids]) of the newest `window` rewarded replies."""
    pairs, labels, ids = [], {s: [] for s in SIGNALS}, []
    seen = set()
    for _, e in r.xrevrange(keys.rewards, count=window):
        rid = e.get("reply_id", "")
        if e.get("state") != "rewarded" or rid in seen or e.get("opt_out", "0") not in ("", "0"):
            continue
        seen.add(rid)
        reply = load_reply(r, keys, rid, max_tokens)
        if reply is None:
            continue
        try:
            components = json.loads(r.hget(keys.reward(rid), "components") or "{}")
            reward = float(e.get("reward", "nan"))
        except (TypeError, ValueError):
            continue
        for sig, y in labels_from_components(components, reward).items():
            labels[sig].append(y)
        pairs.append((reply.prompt_ids, reply.reply_ids))
        ids.append(rid)
    return pairs, {s: np.array(v, dtype=np.int64) for s, v in labels.items()}, ids


def refresh(r: redis.Redis, keys: Keys, model, device, base_model: str, data_dir, window: int,
            cfg: RewardModelConfig | None = None, min_auroc: float = 0.6) -> RewardModel | None:
    """Retrain the reward model on the newest labelled replies and save it; None when there are
    too few (the previous model, if any, stays on disk and is returned instead). The manifest
    says whether it passed `min_auroc`: servers rerank only with a trusted one."""
    cfg = cfg or RewardModelConfig()
    pairs, labels, ids = labelled_replies(r, keys, window, cfg.max_reply_tokens)
    if len(ids) < cfg.min_samples:
        log.info("reward model: %d labelled replies, need %d; keeping the previous one", len(ids), cfg.min_samples)
        old = RewardModel.load(data_dir)
        return old if old is not None and old.base_model == base_model else None
    feats = extract_features(model, pairs, device, cfg.max_reply_tokens)
    rm = fit(feats, labels, ids, cfg, base_model=base_model)
    rm.metrics["trusted"] = trusted(rm, min_auroc)
    rm.save(data_dir)
    log.info("reward model: %d replies, held-out AUROC liked=%s", len(ids), rm.metrics["liked"]["auroc"])
    return rm


def trusted(rm: RewardModel | None, min_auroc: float) -> bool:
    auc = (rm.metrics.get("liked") or {}).get("auroc") if rm is not None else None
    return auc is not None and auc >= min_auroc
