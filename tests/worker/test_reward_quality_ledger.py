"""The quality scores through the real ledger (real Redis): a vetoed reply's final reward and
its rewards-stream entry, a user who upvotes unsafe replies down-weighted and listed for /ops."""
from __future__ import annotations

import json

import pytest

from core.keys import Keys
from core.redis_conn import connect
from tests.support.records import add_replies, feedback_event, reply_event
from worker.ops.store import OpsStore
from worker.rewards import processor
from worker.rewards.config import RewardConfig
from worker.rewards.ledger import RewardLedger

pytestmark = pytest.mark.integration
CFG = RewardConfig(wait_window_s=0.001)


def run(rdb, redis_url, prefix, events) -> RewardLedger:
    ledger = RewardLedger(connect(redis_url), Keys(prefix))
    ledger.ensure_group()
    for ev in events:
        rdb.xadd(Keys(prefix).events, ev)
    processor.process_events(ledger, CFG, "c1")
    processor.finalize_due(ledger, CFG, 1e12)
    return ledger


def scored(rdb, prefix, ids, unsafe: float) -> None:
    for rid in ids:
        rdb.hset(Keys(prefix).reply(rid), "quality", json.dumps({"unsafe": unsafe, "safety_scorer": "test",
                                                                  "relevance": 0.5, "fluency": -0.5}))


def test_upvoted_unsafe_replies_are_vetoed_and_their_fan_down_weighted(rdb, redis_url, prefix):
    rude = add_replies(rdb, prefix, 6, user="troll", session="s_t", text="Shut up, you idiot.")
    fine = add_replies(rdb, prefix, 2, user="troll", session="s_t2")
    scored(rdb, prefix, rude, 0.98)
    scored(rdb, prefix, fine, 0.02)
    evs = [reply_event(r, "troll", "s_t") for r in rude]
    evs += [feedback_event(r, "thumbs", 1, f"e{i}", user="troll", session="s_t") for i, r in enumerate(rude[:5])]
    ledger = run(rdb, redis_url, prefix, evs)

    first = ledger.entry(rude[0])
    assert first["state"] == "rewarded" and float(first["reward"]) == pytest.approx(-0.98)
    assert first["vetoed"] == "1" and "vetoed: unsafe level 0.98" in first["veto"]
    assert any(line.startswith("vetoed") for line in json.loads(first["explain"]))
    stream = {f["reply_id"]: f for _, f in rdb.xrange(Keys(prefix).rewards)}
    assert stream[rude[0]]["vetoed"] == "1"
    assert rdb.lrange(Keys(prefix).user_positives("troll"), 0, -1) == ["1"] * 5

    # the next reward of that user counts at the unsafe-voter weight, and /ops lists them
    evs = [feedback_event(r, "thumbs", 1, f"f{i}", user="troll", session="s_t2") for i, r in enumerate(fine)]  # opens them
    ledger = run(rdb, redis_url, prefix, evs)
    later = ledger.entry(fine[0])
    assert float(later["user_weight"]) == CFG.unsafe_voter_weight and later["unsafe_voter_reason"]
    assert json.loads(later["components"])["thumbs"] == pytest.approx(CFG.unsafe_voter_weight)
    flagged = OpsStore(ledger.r, Keys(prefix)).flagged_users()
    assert [u["user_id"] for u in flagged] == ["troll"]
    assert flagged[0]["unsafe_voter_weight"] == CFG.unsafe_voter_weight
    assert "positive signals were on unsafe replies" in flagged[0]["unsafe_voter_reason"]
