"""Sample selection on plain data (learner/samples.py): no Redis, no model."""
from __future__ import annotations

import math

import pytest

from core.sampling import SamplingParams
from learner.config import GateSettings, ReplaySettings, SftSettings, TrainConfig
from learner.samples import LoggedReply, RewardRow, in_holdout, replay_sample, select_samples

CFG = TrainConfig(gate=GateSettings(holdout_share=0.0), max_staleness=2)


def reply(i: int, user: str = "u0", reranked: bool = False, opt_out: bool = False) -> LoggedReply:
    return LoggedReply(prompt_ids=[1, 2], reply_ids=[3, 4 + i], logprobs=[-0.5, -1.0],
                       params=SamplingParams(temperature=0.7, top_p=0.9), reranked=reranked,
                       adapter_version="base", user_id=user, opt_out=opt_out)


def row(i: int, user: str = "u0", new: bool = True, **kw) -> RewardRow:
    fields = dict(stream_id=f"{i}-0", reply_id=f"x{i}", user_id=user, state="rewarded", reward=0.5,
                  adapter_version="base", opt_out=False, new=new)
    return RewardRow(**{**fields, **kw})


def select(rows, records=None, cfg=CFG, newest=0, share=1.0, excluded=frozenset()):
    records = {r.reply_id: reply(int(r.reply_id[1:]), r.user_id) for r in rows} if records is None else records
    return select_samples(records, rows, cfg, newest_version=newest, max_user_share=share, excluded_users=excluded)


def test_each_rule_drops_with_its_reason():
    rows = [row(0, adapter_version="2"), row(1, opt_out=True), row(2, user="gone"), row(3, reward=math.nan),
            row(4, adapter_version="weird"), row(5, adapter_version="base"), row(6, adapter_version="3"),
            row(7, state="pending"), row(0, stream_id="9-0", adapter_version="2")]
    records = {r.reply_id: reply(int(r.reply_id[1:])) for r in rows}
    records["x6"] = None                                   # its hash is gone
    out = select(rows, records, newest=3, excluded=frozenset({"gone"}))
    assert [s.reply_id for s in out.train] == ["x0"] and out.train[0].adapter_version == "2"
    assert out.dropped == {"stale": 1, "opt_out": 2, "bad_reward": 1, "unknown_version": 1,
                           "missing_reply": 1, "not_final": 1, "duplicate": 1}


def test_an_opted_out_reply_record_is_left_out():
    out = select([row(0), row(1)], {"x0": reply(0), "x1": reply(1, opt_out=True)})
    assert [s.reply_id for s in out.train] == ["x0"] and out.dropped == {"opt_out": 1}


def test_unscored_entries_wait_for_the_reward_model_and_only_new_ones():
    out = select([row(0, state="unscored", reward=0.0), row(1, state="unscored", reward=0.0, new=False), row(2)])
    assert [s.reply_id for s in out.unscored] == ["x0"] and [s.reply_id for s in out.train] == ["x2"]


def test_the_replay_sample_is_bounded_by_the_new_data_and_seeded():
    old = [row(i, user=f"u{i}", new=False) for i in range(100)]
    new = [row(100 + i, user=f"n{i}") for i in range(5)]
    cfg = TrainConfig(gate=GateSettings(holdout_share=0.0), replay=ReplaySettings(ratio=2.0))
    a, b = select(old + new, cfg=cfg), select(old + new, cfg=cfg)
    assert len(a.train) == 5 + 10 and a.replayed == 10 and a.dropped["not_replayed"] == 90
    assert [s.reply_id for s in a.train] == [s.reply_id for s in b.train]          # same run, same sample
    other = select(old + new, cfg=cfg, newest=1)
    assert {s.reply_id for s in other.train} != {s.reply_id for s in a.train}      # the next run draws others
    assert all(s.reply_id in {r.reply_id for r in new} for s in a.train[:5])      # new ones first, all kept


def test_replay_sample_edges():
    assert replay_sample([], 10, 1.0, seed=0) == []
    assert replay_sample(["a", "b"], 0, 1.0, seed=0) == []
    assert replay_sample(["a", "b", "c"], 10, 1.0, seed=0) == ["a", "b", "c"]   # fewer than asked: all


def test_the_user_cap_drops_replayed_samples_before_new_ones():
    loud_old = [row(i, user="loud", new=False) for i in range(6)]
    new = [row(10, user="loud")] + [row(11 + i, user=f"q{i}") for i in range(3)]
    out = select(loud_old + new, cfg=TrainConfig(gate=GateSettings(holdout_share=0.0),
                                                 replay=ReplaySettings(ratio=2.0)), share=0.5)
    ids = [s.reply_id for s in out.train]
    assert "x10" in ids and out.dropped["user_share_cap"] >= 1
    assert sum(s.user_id == "loud" for s in out.train) <= 0.5 * len(ids)


def test_holdout_is_deterministic_and_never_a_reranked_reply():
    rows = [row(i, user=f"u{i}") for i in range(200)]
    records = {r.reply_id: reply(int(r.reply_id[1:]), r.user_id, reranked=int(r.reply_id[1:]) % 2 == 0) for r in rows}
    cfg = TrainConfig(gate=GateSettings(holdout_share=0.3))
    out = select(rows, records, cfg=cfg)
    held = {s.reply_id for s in out.holdout}
    assert held and all(int(rid[1:]) % 2 == 1 for rid in held)
    assert held == {r.reply_id for r in rows if int(r.reply_id[1:]) % 2 == 1 and in_holdout(r.reply_id, 0.3, cfg.seed)}


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, True, "1", 17])
def test_replay_ratio_is_validated(bad):
    with pytest.raises(ValueError, match="ReplaySettings.ratio"):
        TrainConfig(replay=ReplaySettings(ratio=bad))


def test_the_safety_rule_makes_an_unsafe_reply_a_negative_example_only():
    from dataclasses import replace

    from worker.rewards.config import RewardConfig
    rows = [row(0, reward=1.0), row(1, reward=1.0, vetoed=True), row(2, reward=1.0), row(3, state="unscored", reward=0.0)]
    records = {r.reply_id: reply(int(r.reply_id[1:])) for r in rows}
    records["x2"] = replace(records["x2"], unsafe=0.8)    # scored unsafe at the reply's end
    records["x3"] = replace(records["x3"], unsafe=0.99)
    cfg = TrainConfig(gate=GateSettings(holdout_share=0.0), sft=SftSettings(threshold=-0.95))
    out = select_samples(records, rows, cfg, newest_version=0, max_user_share=1.0, safety=RewardConfig())
    rewards = {s.reply_id: s.reward for s in out.train}
    assert rewards["x0"] == 1.0 and rewards["x1"] < -0.95 and rewards["x2"] < -0.95
    assert out.unscored == [] and out.dropped["unsafe_unscored"] == 1
    off = select_samples(records, rows, cfg, newest_version=0, max_user_share=1.0, safety=RewardConfig(safety_veto=False))
    assert {s.reply_id: s.reward for s in off.train}["x2"] == 1.0
