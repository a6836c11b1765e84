"""Building the training set from reward entries (real Redis, no model)."""
from __future__ import annotations

import json

import pytest

from learner.config import GateSettings, ReplaySettings, SftSettings, TrainConfig
from learner.dataset import build_dataset, count_new, version_number
from tests.support.learner import fake, write_logged
from worker.rewards.config import RewardConfig

pytestmark = pytest.mark.integration

CFG = TrainConfig(gate=GateSettings(holdout_share=0.0), replay=ReplaySettings(window=0), max_staleness=2)  # new rewards only
ALL_USERS = RewardConfig(max_user_share=1.0)


def test_reads_samples_after_the_cursor(rdb, keys):
    ids = write_logged(rdb, keys, [fake(i, f"u{i}") for i in range(4)], lambda it: 0.5)
    data = build_dataset(rdb, keys, CFG, ALL_USERS, newest_version=0)
    assert [s.reply_id for s in data.train] == ["x0", "x1", "x2", "x3"]
    s = data.train[2]
    assert s.prompt_ids == [1, 2, 3] and s.reply_ids == [4, 5, 8] and s.behavior_logp == [-0.5, -1.0, -2.0]
    assert s.reward == 0.5 and s.params.temperature == 0.7 and s.adapter_version == "base"
    assert data.last_id == ids[-1]
    rdb.set(keys.learn_cursor, ids[1])
    assert [s.reply_id for s in build_dataset(rdb, keys, CFG, ALL_USERS, 0).train] == ["x2", "x3"]
    assert count_new(rdb, keys, limit=10) == 2


def test_drops_opt_out_forgotten_stale_missing_and_unfinished(rdb, keys):
    write_logged(rdb, keys, [fake(0, "ok")], lambda it: 1.0)
    write_logged(rdb, keys, [fake(1, "ok")], lambda it: 1.0, opt_out="1")  # flag on the entry
    rdb.hset(keys.user("gone"), "forgotten", "1")
    write_logged(rdb, keys, [fake(2, "gone")], lambda it: 1.0)  # flag on the user
    write_logged(rdb, keys, [fake(3, "ok")], lambda it: 1.0, version="1")  # 5 - 1 > 2: stale
    write_logged(rdb, keys, [fake(4, "ok")], lambda it: 1.0, version="4")  # fresh enough
    rdb.xadd(keys.rewards, {"reply_id": "nope", "user_id": "ok", "state": "rewarded", "reward": "1",
                            "adapter_version": "5", "opt_out": "0"})  # no reply hash
    write_logged(rdb, keys, [fake(5, "ok")], lambda it: 1.0)
    rdb.xadd(keys.rewards, {"reply_id": "x5", "user_id": "ok", "state": "pending", "reward": "0",
                            "adapter_version": "5", "opt_out": "0"})
    data = build_dataset(rdb, keys, CFG, ALL_USERS, newest_version=5)
    assert [s.reply_id for s in data.train] == ["x4"]
    assert data.dropped == {"opt_out": 2, "stale": 3, "missing_reply": 1, "not_final": 1}  # x0, x3, x5: base = 0


def test_caps_each_users_share(rdb, keys):
    items = [fake(i, "loud") for i in range(8)] + [fake(10 + i, f"q{i}") for i in range(4)]
    write_logged(rdb, keys, items, lambda it: 1.0)
    data = build_dataset(rdb, keys, CFG, RewardConfig(max_user_share=0.25), newest_version=0)
    users = [s.user_id for s in data.train]
    assert users.count("loud") <= 0.25 * len(users) + 1e-9 and users.count("loud") >= 1
    assert data.dropped["user_share_cap"] == 12 - len(users)


def test_holdout_split_is_deterministic(rdb, keys):
    write_logged(rdb, keys, [fake(i, f"u{i}") for i in range(40)], lambda it: 0.0)
    cfg = TrainConfig(gate=GateSettings(holdout_share=0.25))
    a = build_dataset(rdb, keys, cfg, ALL_USERS, 0)
    b = build_dataset(rdb, keys, cfg, ALL_USERS, 0)
    assert [s.reply_id for s in a.holdout] == [s.reply_id for s in b.holdout]
    assert 2 <= len(a.holdout) <= 20 and len(a.train) + len(a.holdout) == 40


def test_pairs_need_both_replies_on_the_same_prompt(rdb, keys):
    write_logged(rdb, keys, [fake(0), fake(1)], lambda it: 0.0)
    rdb.hset(keys.reply("other"), mapping={"prompt_ids": json.dumps([9]), "token_ids": "[1]", "logprobs": "[-1]",
                                           "params": "{}", "adapter_version": "base"})
    rdb.xadd(keys.pairs, {"chosen_id": "x0", "rejected_id": "x1", "source": "choose", "user_id": "u0"})
    rdb.xadd(keys.pairs, {"chosen_id": "x0", "rejected_id": "other", "source": "choose", "user_id": "u0"})
    data = build_dataset(rdb, keys, CFG, ALL_USERS, 0, with_pairs=True)
    assert [(p.chosen.reply_id, p.rejected.reply_id) for p in data.pairs] == [("x0", "x1")]


def test_version_numbers():
    assert version_number("base") == 0 and version_number("7") == 7 and version_number("x") is None


def test_an_unsafe_reply_is_never_a_positive_example(rdb, keys):
    """The safety rule: scored unsafe (or vetoed in the ledger) -> its reward is capped below 0 and
    below the SFT threshold, it is never a pair's chosen side, and the reward model never rewards it."""
    write_logged(rdb, keys, [fake(i, f"u{i}") for i in range(4)], lambda it: 1.0)
    rdb.hset(keys.reply("x0"), "quality", json.dumps({"unsafe": 0.97}))   # scored unsafe at the reply's end
    rdb.hset(keys.reply("x1"), "quality", json.dumps({"unsafe": 0.02}))
    rdb.xadd(keys.rewards, {"reply_id": "x9", "user_id": "u9", "state": "rewarded", "reward": "1.0",
                            "adapter_version": "base", "opt_out": "0", "vetoed": "1"})   # vetoed by a report
    write_logged(rdb, keys, [fake(9, "u9")], lambda it: 1.0)
    rdb.xadd(keys.rewards, {"reply_id": "x8", "user_id": "u8", "state": "unscored", "reward": "",
                            "adapter_version": "base", "opt_out": "0"})
    write_logged(rdb, keys, [fake(8, "u8")], lambda it: 1.0)
    rdb.hset(keys.reply("x8"), "quality", json.dumps({"unsafe": 0.9}))
    cfg = TrainConfig(gate=GateSettings(holdout_share=0.0), replay=ReplaySettings(window=0),
                      sft=SftSettings(threshold=-0.9))   # even a low SFT bar
    data = build_dataset(rdb, keys, cfg, ALL_USERS, 0)
    rewards = {s.reply_id: s.reward for s in data.train}
    assert rewards["x0"] < -0.9 and rewards["x1"] == 1.0 and rewards["x2"] == 1.0
    assert rewards["x9"] < -0.9   # the first entry of x9 (the vetoed one) wins
    assert "x8" not in {s.reply_id for s in data.unscored} and data.dropped["unsafe_unscored"] == 1
    assert build_dataset(rdb, keys, cfg, RewardConfig(max_user_share=1.0, safety_veto=False), 0).train[0].reward == 1.0

    rdb.xadd(keys.pairs, {"chosen_id": "x0", "rejected_id": "x1", "source": "choose", "user_id": "u0"})
    rdb.xadd(keys.pairs, {"chosen_id": "x1", "rejected_id": "x0", "source": "choose", "user_id": "u0"})
    data = build_dataset(rdb, keys, CFG, ALL_USERS, 0, with_pairs=True)
    assert [(p.chosen.reply_id, p.rejected.reply_id) for p in data.pairs] == [("x1", "x0")]
    assert data.dropped["unsafe_chosen_pair"] == 1
