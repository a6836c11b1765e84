"""A learned reward model from user signals: P[signal | prompt, reply] for each positive
signal the ledger records, as deployed systems do (a P[Love] or P[continue] classifier).

    features  the frozen base model (adapter off) reads prompt + reply once: the mean of the
              last hidden state over the reply tokens, the last token's state, log(1 + length)
    heads     one logistic regression per signal on standardized features (L2, full batch)
    labels    from the ledger's reward components (worker/rewards): `liked` = the final reward
              was > 0; `thumbs_up`, `continuation`, `copy`, `long_dwell` = that component fired
              positively
    held out  a deterministic share of replies (by id) for calibration: AUROC, Brier score and a
              reliability table per signal (`rewardloop evaluate --reward-model`)

Uses: a reward for replies no user signalled (RewardConfig.no_signal_policy = "model", in the
learner's dataset), and the direct-method term of the gate's doubly-robust estimate.
The base model is frozen, so features are computed once per reply and the heads train in
milliseconds; the model lives in DATA_DIR/reward_model/ (safetensors + manifest.json).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.config_fields import setting, validate

SIGNALS = ("liked", "thumbs_up", "continuation", "copy", "long_dwell")
MAIN = "liked"  # the head that gives rewards and the gate's direct estimate
FOLDER = "reward_model"


@dataclass(frozen=True)
class RewardModelConfig:
    l2: float = setting(1.0, "L2 penalty on the head weights (standardized features).", ge=0)
    steps: int = setting(200, "Full-batch LBFGS iterations per head.", ge=1)
    holdout_share: float = setting(0.25, "Share of replies held out for calibration.", gt=0, lt=1)
    min_samples: int = setting(16, "Fewest labelled replies worth training on.", ge=1)
    max_reply_tokens: int = setting(256, "Longer replies are cut for the features.", ge=1)
    seed: int = setting(0, "Seed of the held-out split.")

    def __post_init__(self):
        validate(self)


def labels_from_components(components: dict, reward: float | None) -> dict[str, int]:
    """{signal: 0/1} for one final reply. Pure."""
    def pos(name):
        v = components.get(name)
        return int(isinstance(v, (int, float)) and v > 0)
    return {"liked": int(reward is not None and reward > 0),
            "thumbs_up": int(pos("thumbs") or pos("rating") or pos("choose")),
            "continuation": pos("continuation"), "copy": pos("copy"), "long_dwell": pos("dwell")}


def in_holdout(reply_id: str, share: float, seed: int) -> bool:
    digest = hashlib.sha256(f"rm:{seed}:{reply_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < share


# ---------------------------------------------------------------- metrics (pure numpy)

def auroc(scores, labels) -> float | None:
    """Area under the ROC curve (ties count half); None when one class is absent."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def brier(probs, labels) -> float:
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return float(np.mean((p - y) ** 2))


def reliability(probs, labels, bins: int = 5) -> list[dict]:
    """Per probability bin: count, mean predicted, observed rate."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    rows = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (p >= lo) & ((p < hi) if b < bins - 1 else (p <= hi))
        rows.append({"bin": [lo, hi], "n": int(sel.sum()),
                     "predicted": float(p[sel].mean()) if sel.any() else None,
                     "observed": float(y[sel].mean()) if sel.any() else None})
    return rows


# ---------------------------------------------------------------- features (the frozen base model)

@torch.no_grad()
def extract_features(model, pairs: list[tuple[list[int], list[int]]], device, max_reply_tokens: int = 256,
                     batch_size: int = 8) -> np.ndarray:
    """[(prompt ids, reply ids)] -> [N, 2H + 1] features from the base model's last hidden state.
    A PeftModel is read with its adapter disabled: the reward model sees the base model only, so
    its features do not move when the policy does."""
    disable = getattr(model, "disable_adapter", None)
    ctx = disable() if disable is not None else _null()
    out = []
    with ctx:
        for i in range(0, len(pairs), batch_size):
            chunk = [(p, r[:max_reply_tokens]) for p, r in pairs[i:i + batch_size]]
            P = max(len(p) for p, _ in chunk)
            T = max(max(len(r), 1) for _, r in chunk)
            ids = torch.zeros((len(chunk), P + T), dtype=torch.long)
            attn = torch.zeros_like(ids)
            rmask = torch.zeros((len(chunk), T))
            for b, (p, r) in enumerate(chunk):
                ids[b, P - len(p):P] = torch.tensor(p, dtype=torch.long)
                if r:
                    ids[b, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
                attn[b, P - len(p):P + len(r)] = 1
                rmask[b, :max(len(r), 1)] = 1   # an empty reply reads the last prompt position
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            hs = model(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device),
                       output_hidden_states=True).hidden_states[-1].float().cpu()  # [B, L, H]
            # position P-1+t predicts reply token t, and position P+t has read it: use the latter
            reply_h = hs[:, P:P + T] if T else hs[:, P - 1:P]                      # [B, T, H]
            lengths = rmask.sum(-1).clamp(min=1)                                   # [B]
            mean_h = (reply_h * rmask.unsqueeze(-1)).sum(1) / lengths.unsqueeze(-1)  # [B, H]
            last_idx = (lengths - 1).long()
            last_h = reply_h[torch.arange(len(chunk)), last_idx]                   # [B, H]
            n_tok = torch.tensor([[math.log1p(len(r))] for _, r in chunk])        # [B, 1]
            out.append(torch.cat([mean_h, last_h, n_tok], dim=-1).numpy())
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------- the heads

@dataclass
class RewardModel:
    mean: np.ndarray                  # [D] feature standardization
    std: np.ndarray                   # [D]
    weights: dict[str, np.ndarray]    # signal -> [D]
    bias: dict[str, float]            # signal -> intercept
    base_model: str = ""
    metrics: dict = field(default_factory=dict)

    def predict(self, features: np.ndarray, signal: str = MAIN) -> np.ndarray:
        """[N, D] -> [N] probabilities."""
        z = (features - self.mean) / self.std
        return 1.0 / (1.0 + np.exp(-(z @ self.weights[signal] + self.bias[signal])))

    def reward(self, features: np.ndarray) -> np.ndarray:
        """[N] model reward in [-1, 1]: 2 P[liked] - 1."""
        return 2.0 * self.predict(features, MAIN) - 1.0

    # --- disk ----------------------------------------------------------------------
    def save(self, data_dir: Path) -> Path:
        from safetensors.numpy import save_file
        root = Path(data_dir)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-rm-", dir=root))
        tensors = {"mean": self.mean.astype(np.float32), "std": self.std.astype(np.float32)}
        tensors.update({f"w.{k}": v.astype(np.float32) for k, v in self.weights.items()})
        save_file(tensors, str(tmp / "heads.safetensors"))
        (tmp / "manifest.json").write_text(json.dumps({
            "signals": list(self.weights), "bias": self.bias, "base_model": self.base_model,
            "metrics": self.metrics, "created": time.time(), "features": int(self.mean.shape[0])},
            indent=2, sort_keys=True))
        dest = root / FOLDER
        old = root / f".old-rm-{os.getpid()}"
        if dest.exists():
            os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
        return dest

    @classmethod
    def load(cls, data_dir: Path) -> RewardModel | None:
        from safetensors.numpy import load_file
        folder = Path(data_dir) / FOLDER
        if not (folder / "manifest.json").exists():
            return None
        manifest = json.loads((folder / "manifest.json").read_text())
        t = load_file(str(folder / "heads.safetensors"))
        return cls(mean=t["mean"].astype(np.float64), std=t["std"].astype(np.float64),
                   weights={k: t[f"w.{k}"].astype(np.float64) for k in manifest["signals"]},
                   bias={k: float(v) for k, v in manifest["bias"].items()}, base_model=manifest["base_model"],
                   metrics=manifest.get("metrics", {}))


def _fit_head(z: torch.Tensor, y: torch.Tensor, l2: float, steps: int) -> tuple[np.ndarray, float]:
    """Logistic regression by full-batch LBFGS. z: [N, D] standardized, y: [N] in {0, 1}."""
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    rate = float(y.mean().clamp(1e-3, 1 - 1e-3))
    b = torch.tensor(math.log(rate / (1 - rate)), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w @ w) / len(y)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.detach())


def fit(features: np.ndarray, labels: dict[str, np.ndarray], reply_ids: list[str],
        cfg: RewardModelConfig | None = None, base_model: str = "") -> RewardModel:
    """Train every head on the non-held-out replies; metrics on the held-out ones."""
    cfg = cfg or RewardModelConfig()
    n = len(reply_ids)
    if n < cfg.min_samples:
        raise ValueError(f"{n} labelled replies; the reward model needs at least {cfg.min_samples} "
                         "(RewardModelConfig.min_samples)")
    hold = np.array([in_holdout(r, cfg.holdout_share, cfg.seed) for r in reply_ids])
    if hold.all() or not hold.any():  # tiny sets: still keep both sides
        hold = np.zeros(n, dtype=bool)
        hold[:: max(2, int(round(1 / cfg.holdout_share)))] = True
    train = ~hold
    mean = features[train].mean(0)
    std = features[train].std(0) + 1e-6
    z_train = torch.tensor((features[train] - mean) / std, dtype=torch.float64)
    weights, bias, metrics = {}, {}, {"n_train": int(train.sum()), "n_holdout": int(hold.sum())}
    for sig in SIGNALS:
        y = labels[sig].astype(np.float64)
        rate = float(y[train].mean()) if train.any() else 0.0
        if 0 < rate < 1:
            w, b = _fit_head(z_train, torch.tensor(y[train]), cfg.l2, cfg.steps)
        else:  # one class only: predict the base rate, nothing to learn
            w, b = np.zeros(features.shape[1]), math.log(max(rate, 1e-3) / max(1 - rate, 1e-3))
        weights[sig], bias[sig] = w, b
    model = RewardModel(mean, std, weights, bias, base_model)
    for sig in SIGNALS:
        p, y = model.predict(features[hold], sig), labels[sig][hold]
        metrics[sig] = {"auroc": auroc(p, y), "brier": brier(p, y) if len(y) else None,
                        "base_rate": float(labels[sig].mean()), "reliability": reliability(p, y)}
    model.metrics = metrics
    return model
