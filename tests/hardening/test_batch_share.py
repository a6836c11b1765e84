"""One user sending thousands of thumbs cannot exceed their share of a training batch: end to
end through the real server, the real reward pipeline (process + finalize) and the learner's
dataset builder."""
from __future__ import annotations

from collections import Counter

import pytest

from core.keys import Keys
from learner.config import GateSettings, ReplaySettings, TrainConfig
from learner.dataset import build_dataset
from tests.support.clients import Chat
from tests.support.devtools import finalize_rewards
from worker.rewards.config import RewardConfig

pytestmark = pytest.mark.integration
THUMBS = 3000


def test_thousands_of_thumbs_from_one_user_stay_within_their_share(server_factory, redis_url, rdb):
    srv = server_factory(REWARDLOOP_FEEDBACK_RATE=100_000, REWARDLOOP_FEEDBACK_BURST=100_000,
                         REWARDLOOP_MAX_NEW_TOKENS=4)
    flood = Chat(srv, srv.token("mallory"))
    mine = [flood.ask(f"question {i}")["start"]["reply_id"] for i in range(12)]
    for i in range(THUMBS):   # pipelined: thousands of distinct feedback ids
        flood.send({"type": "feedback", "feedback_id": f"t{i}", "reply_id": mine[i % len(mine)],
                    "kind": "thumbs", "value": 1})
    answers = Counter()
    while sum(answers.values()) < THUMBS:
        f = flood.recv(timeout=60)
        answers[f["type"] if f["type"] == "ack" else f["code"]] += 1
    assert answers == {"ack": THUMBS}
    honest = {}
    for u in range(4):
        chat = Chat(srv, srv.token(f"honest{u}"))
        for i in range(3):
            rid = chat.ask(f"hi {i}")["start"]["reply_id"]
            assert chat.feedback(rid, "thumbs", 1 if i % 2 else -1)["type"] == "ack"
            honest[rid] = f"honest{u}"
        chat.close()

    finalize_rewards(redis_url, srv.prefix)
    cfg = RewardConfig()
    data = build_dataset(rdb, Keys(srv.prefix), TrainConfig(gate=GateSettings(holdout_share=0.0),
                                                            replay=ReplaySettings(window=0), max_staleness=2),
                         cfg, newest_version=0)
    users = Counter(s.user_id for s in data.train)
    share = users["mallory"] / len(data.train)
    assert share <= cfg.max_user_share, (share, users)
    assert users["mallory"] >= 1 and all(users[f"honest{u}"] == 3 for u in range(4))
    assert len({s.reply_id for s in data.train}) == len(data.train)      # one sample per reply, not per thumb
    assert all(-1.0 <= s.reward <= 1.0 for s in data.train)
    print(f"\n{THUMBS} thumbs from one user on {len(mine)} replies + 12 honest replies -> {len(data.train)} samples, "
          f"{users['mallory']} from the flooder ({share:.0%}, cap {cfg.max_user_share:.0%}); "
          f"dropped {dict(data.dropped)}")
