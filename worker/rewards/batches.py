"""Batches and abuse: how much one user may weigh in a training batch, and how little a
burst of votes from one user counts. Pure."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from worker.rewards.config import RewardConfig
from worker.rewards.user_signals import _num, _sign

T = TypeVar("T")

def _share_cap(counts: list[int], max_share: float) -> int:
    """Largest per-user cap m with (biggest kept) / (all kept) <= max_share. With too few users
    no cap fits (2 users can never be under 50 %); then the tightest achievable share is used."""
    share = {m: m / sum(min(c, m) for c in counts) for m in range(1, max(counts) + 1)}
    limit = max(max_share, min(share.values())) + 1e-12
    return max(m for m, s in share.items() if s <= limit)


def cap_user_share(samples: Sequence[T], user_of: Callable[[T], str], max_share: float) -> list[T]:
    """Keep each user's share of the batch <= max_share by keeping each user's earliest samples
    (input order preserved); every user keeps at least one."""
    if not 0.0 < max_share <= 1.0:
        raise ValueError(f"max_share must be in (0, 1]; got {max_share!r}")
    counts = Counter(user_of(s) for s in samples)
    if not counts:
        return []
    cap = _share_cap(list(counts.values()), max_share)
    taken: Counter = Counter()
    kept = []
    for s in samples:
        user = user_of(s)
        if taken[user] < cap:
            taken[user] += 1
            kept.append(s)
    return kept


def _vote_sign(kind: str, value: Any) -> int | None:
    """+1/-1/0 for a thumbs or rating (rating 3 is neutral), None for anything else."""
    v = _num(value)
    if v is None:
        return None
    if kind == "thumbs":
        return _sign(v)
    if kind == "rating":
        return _sign(v - 3)
    return None


def unsafe_voter_weight(recent: Sequence[int], cfg: RewardConfig) -> tuple[float, str | None]:
    """User weight from the user's recent positively-signalled replies (1 = the reply was unsafe,
    0 = it was not): a user whose positive signals land mostly on unsafe replies is down-weighted,
    as an automated-looking voter is."""
    if len(recent) < cfg.unsafe_voter_min_events:
        return 1.0, None
    unsafe = sum(1 for x in recent if x)
    if unsafe / len(recent) > cfg.unsafe_voter_share:
        return cfg.unsafe_voter_weight, (f"{unsafe} of their last {len(recent)} positive signals were on unsafe "
                                         f"replies (more than {cfg.unsafe_voter_share:.0%})")
    return 1.0, None


def anomaly_weight(
    events: Sequence[tuple[str, Any, float | None]], cfg: RewardConfig
) -> tuple[float, str | None]:
    """User weight from one user's recent feedback (kind, value, seconds after reply end), oldest
    first. The last cfg.anomaly_min_events votes (thumbs or ratings) all with the same sign and
    all within cfg.anomaly_fast_s of the reply ending look automated: nobody reads that fast."""
    votes = [(sign, after) for kind, value, after in events if (sign := _vote_sign(kind, value)) is not None]
    last = votes[-cfg.anomaly_min_events :]
    if len(last) < cfg.anomaly_min_events:
        return 1.0, None
    signs = {sign for sign, _ in last}
    fast = all(after is not None and after <= cfg.anomaly_fast_s for _, after in last)
    if fast and len(signs) == 1 and 0 not in signs:
        direction = "positive" if signs == {1} else "negative"
        return cfg.anomaly_weight, (
            f"last {len(last)} votes all {direction}, each within {cfg.anomaly_fast_s:g} s of the reply ending"
        )
    return 1.0, None
