"""The reward model's training data: the newest final, user-signalled replies and what each
user did (the ledger's reward components), read through core.history.History (Redis, then the
archive). I/O only; the model itself is in learner/reward_model.py."""
from __future__ import annotations

import logging

import numpy as np
import redis

from core.archive import Archive
from core.history import History
from core.keys import Keys
from learner.dataset import load_replies
from learner.feature_cache import FeatureCache
from learner.reward_model import SIGNALS, RewardModel, RewardModelConfig, fit, labels_from_components

log = logging.getLogger(__name__)


def labelled_replies(r: redis.Redis, keys: Keys, window: int, max_tokens: int, archive: Archive | None = None):
    """([(reply id, prompt ids, reply ids)], {signal: [N] 0/1}) of the newest `window` rewarded replies."""
    h = History(r, keys, archive)
    newest, seen = [], set()
    for e in reversed(h.rewards(count=window, newest=True)):
        rid = e.reply_id or ""
        if e.state != "rewarded" or rid in seen or e.opt_out:
            continue
        seen.add(rid)
        newest.append(e)
    replies = load_replies(h, [e.reply_id for e in newest], max_tokens)
    ledger = h.ledger([e.reply_id for e in newest])
    items, labels = [], {s: [] for s in SIGNALS}
    for e in newest:
        reply, entry = replies.get(e.reply_id), ledger.get(e.reply_id)
        if reply is None or e.reward is None:
            continue
        components = (entry.components if entry else None) or {}
        for sig, y in labels_from_components(components, e.reward).items():
            labels[sig].append(y)
        items.append((e.reply_id, reply.prompt_ids, reply.reply_ids))
    return items, {s: np.array(v, dtype=np.int64) for s, v in labels.items()}


def refresh(r: redis.Redis, keys: Keys, policy, *, data_dir, window: int, cache: FeatureCache,
            cfg: RewardModelConfig | None = None, min_auroc: float = 0.6,
            archive: Archive | None = None) -> RewardModel | None:
    """Retrain the reward model on the newest labelled replies and save it; None when there are
    too few (the previous model, if any, stays on disk and is returned instead). Features come
    from `cache` (only replies it has not seen go through the model). The manifest says whether
    it passed `min_auroc`: servers rerank only with a trusted one."""
    cfg = cfg or RewardModelConfig()
    items, labels = labelled_replies(r, keys, window, cfg.max_reply_tokens, archive)
    if len(items) < cfg.min_samples:
        log.info("reward model: %d labelled replies, need %d; keeping the previous one", len(items), cfg.min_samples)
        old = RewardModel.load(data_dir)
        return old if old is not None and old.base_model == policy.model_id else None
    feats = cache.features(policy, items)
    rm = fit(feats.astype(np.float64), labels, [rid for rid, _, _ in items], cfg, base_model=policy.model_id)
    rm.metrics["trusted"] = trusted(rm, min_auroc)
    rm.save(data_dir)
    log.info("reward model: %d replies (%d features extracted), held-out AUROC liked=%s", len(items),
             cache.extracted, rm.metrics["liked"]["auroc"])
    return rm


def trusted(rm: RewardModel | None, min_auroc: float) -> bool:
    auc = (rm.metrics.get("liked") or {}).get("auroc") if rm is not None else None
    return auc is not None and auc >= min_auroc
