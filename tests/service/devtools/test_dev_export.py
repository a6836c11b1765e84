"""Pure parts of the developer tools, on plain data: time filters, versions, export rows."""
from __future__ import annotations

import pytest

from service.devtools import export
from service.devtools.sessions import normalize_version, parse_time

P1 = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
P2 = [{"role": "system", "content": "sys"}, {"role": "user", "content": "other"}]


def rep(rid, text, prompt=P1, reward=None, state="rewarded", in_history=True, finish="stop", events=(), opt_out=0):
    return {"reply_id": rid, "session_id": "s_1", "text": text, "prompt_messages": prompt, "finish_reason": finish,
            "in_history": in_history, "opt_out": opt_out, "adapter_version": "base", "events": list(events),
            "reward": None if reward is None else {"state": state, "reward": reward}}


def test_parse_time_forms():
    assert parse_time("1700000000") == 1700000000.0
    assert parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_time("7d", now=1e6) == 1e6 - 7 * 86400
    assert parse_time("2026-11-28") == parse_time("2026-11-28T00:00:00+00:00")
    assert parse_time(None) is None
    with pytest.raises(ValueError, match="ISO date"):
        parse_time("last tuesday")


def test_normalize_version():
    assert [normalize_version(v) for v in ("v3", "3", "base", None)] == ["3", "3", "base", None]


def test_sft_keeps_only_kept_finished_non_empty_replies():
    s = {"session_id": "s_1", "replies": [rep("a", "yes", reward=0.5), rep("b", "no", in_history=False),
                                          rep("c", "  ", reward=1.0), rep("d", "cut", finish="error"),
                                          rep("e", "low", reward=-0.5), rep("f", "private", opt_out=1)]}
    assert [r["messages"][-1]["content"] for r in export.sft_rows(s)] == ["yes", "low"]
    assert [r["messages"][-1]["content"] for r in export.sft_rows(s, reply_min_reward=0)] == ["yes"]
    assert list(export.sft_rows(s))[0]["messages"][:2] == P1


def test_kto_labels_from_user_rewards_only():
    s = {"session_id": "s_1", "replies": [rep("a", "good", reward=0.7), rep("b", "bad", reward=-0.2),
                                          rep("c", "none", reward=0.0), rep("d", "dflt", reward=0.3, state="defaulted"),
                                          rep("e", "pending")]}
    assert [(r["completion"][0]["content"], r["label"]) for r in export.kto_rows(s)] == [("good", True), ("bad", False)]


def test_dpo_pairs_need_the_same_prompt():
    choose = {"kind": "choose", "value": "b"}
    s = {"session_id": "s_1", "replies": [rep("a", "A", events=[choose]), rep("b", "B", in_history=False),
                                          rep("c", "C"), rep("d", "D", prompt=P2)],
         "pairs": [{"chosen_id": "a", "rejected_id": "b", "source": "choose"},
                   {"chosen_id": "c", "rejected_id": "d", "source": "regenerate"}]}
    rows = list(export.dpo_rows(s))
    assert rows == [{"prompt": P1, "chosen": [{"role": "assistant", "content": "A"}],
                     "rejected": [{"role": "assistant", "content": "B"}]}]


def test_unknown_format_says_which_exist():
    with pytest.raises(ValueError, match="jsonl, sft, kto, dpo"):
        list(export.rows([], "csv"))
