"""`rewardloop rewards score`'s pure half (worker/rewards/offline.py): each bad line is named with
what to fix, and a line's signals give the components the worker computes from the same
feedback events and reply record."""
from __future__ import annotations

import json

import pytest

from worker.rewards.config import RewardConfig
from worker.rewards.function import compute_reward
from worker.rewards.offline import SIGNALS, LineError, parse_line, result_row, reward_of
from worker.rewards.signals import parse_event, reply_facts, signals_of

T0 = 1_000_000.0
QUALITY = {"unsafe": 0.02, "safety_scorer": "alt-profanity-check", "relevance": 1.3, "fluency": -0.4,
           "relevance_pmi": 0.8, "fluency_logprob": -2.1, "scored_tokens": 9}


def line(**kw) -> str:
    return json.dumps({"prompt": "What is the capital of France?", "reply": "Paris is the capital of France.", **kw})


@pytest.mark.parametrize("text, fix", [
    ('{"prompt": "a", "reply": ', "not valid JSON"),
    ('["prompt", "reply"]', 'must be a JSON object with "prompt" and "reply"'),
    ('{"reply": "x"}', '"prompt" is missing'),
    ('{"prompt": "x"}', '"reply" is missing'),
    ('{"prompt": "x", "reply": 3}', '"reply" must be a string, got 3'),
    ('{"prompt": null, "reply": "x"}', '"prompt" must be a string, got null'),
    ('{"prompt": "x", "reply": "y", "signal": {}}', "unknown key 'signal': did you mean 'signals'?"),
    ('{"prompt": "x", "reply": "y", "signals": [1]}', '"signals" must be an object'),
    ('{"prompt": "x", "reply": "y", "signals": {"thumb": 1}}', "unknown signal 'thumb': did you mean 'thumbs'?"),
    ('{"prompt": "x", "reply": "y", "signals": {"fluency": 1}}', "signal 'fluency' cannot be given"),
    ('{"prompt": "x", "reply": "y", "signals": {"truncated": true}}', '"finish_reason": "length"'),
    ('{"prompt": "x", "reply": "y", "signals": {"thumbs": 2}}', "'thumbs' must be 1 (up), -1 (down) or 0"),
    ('{"prompt": "x", "reply": "y", "signals": {"thumbs": true}}', "'thumbs' must be 1"),
    ('{"prompt": "x", "reply": "y", "signals": {"rating": 0}}', "'rating' must be a number of stars from 1 to 5"),
    ('{"prompt": "x", "reply": "y", "signals": {"rating": NaN}}', "NaN is not a number JSON allows"),
    ('{"prompt": "x", "reply": "y", "signals": {"dwell": -Infinity}}', "-Infinity is not a number JSON allows"),
    ('{"prompt": "x", "reply": "y", "signals": {"dwell": -5}}', "'dwell' must be milliseconds"),
    ('{"prompt": "x", "reply": "y", "signals": {"dwell": 1e999}}', "'dwell' must be milliseconds"),
    ('{"prompt": "x", "reply": "y", "signals": {"copy": 1}}', "'copy' must be true"),
    ('{"prompt": "x", "reply": "y", "signals": {"choose": "yes"}}', "'choose' must be true"),
    ('{"prompt": "x", "reply": "y", "finish_reason": "done"}', '"finish_reason" must be one of stop, length'),
])
def test_a_bad_line_is_named_with_its_number_and_the_fix(text, fix):
    with pytest.raises(LineError) as err:
        parse_line(text, 7)
    assert err.value.line == 7 and str(err.value).startswith("line 7: ") and fix in str(err.value)


def test_blank_lines_are_skipped_and_signals_are_optional():
    assert parse_line("   \n", 3) is None
    parsed = parse_line(line(id="q1"), 4)
    assert (parsed.line, parsed.signals, parsed.finish_reason, parsed.id) == (4, {}, "stop", "q1")


def _worker_reward(reply: str, quality: dict, events: list[dict], finish: str = "stop"):
    """What the reward worker computes: the reply record (quality stored as JSON) and the
    signals of the feedback events the server wrote."""
    record = {"reply_id": "rep_a", "text": reply, "ended_at": repr(T0), "user_id": "u1", "finish_reason": finish,
              "quality": json.dumps(quality)}
    sigs = []
    for i, ev in enumerate(events):
        fields = {"event_id": f"ev{i}", "reply_id": "rep_a", "session_id": "s1", "user_id": "u1",
                  "server_time": repr(T0 + 1), **{k: v if isinstance(v, str) else json.dumps(v) for k, v in ev.items()}}
        sigs += [s for rid, s in signals_of(parse_event(f"{i}-0", fields)) if rid == "rep_a"]
    return compute_reward(reply_facts(record), sigs, RewardConfig())


CASES = [  # (signals on a line, the events the chat page sends for the same actions)
    ({"thumbs": 1, "copy": True}, [{"kind": "thumbs", "value": 1}, {"kind": "copy"}]),
    ({"thumbs": -1, "regenerate": True, "tag_inaccurate": True, "tag_too_long": True},
     [{"kind": "thumbs", "value": -1, "tags": ["inaccurate", "too_long"]}, {"kind": "regenerate"}]),
    ({"rating": 4, "dwell": 9000, "continuation": 30}, [{"kind": "rating", "value": 4},
                                                        {"kind": "dwell", "value": 9000},
                                                        {"kind": "continuation", "value": 30}]),
    ({"choose": False, "edited": True}, [{"kind": "choose", "value": "rep_a"} | {"reply_id": "rep_b"},
                                         {"kind": "edited"}]),
    ({"sibling": "preferred", "tag_helpful": True}, [{"kind": "sibling", "value": "rep_b", "how": "copied it"},
                                                     {"kind": "reasons", "tags": ["helpful"]}]),
    ({"thumbs": 1, "safety": True}, [{"kind": "thumbs", "value": 1}, {"kind": "reasons", "tags": ["unsafe"]}]),
    ({"abandon": True}, [{"kind": "abandon"}]),
    ({}, []),
]


@pytest.mark.parametrize("signals, events", CASES)
def test_a_lines_signals_give_the_workers_components(signals, events):
    parsed = parse_line(line(signals=signals), 1)
    offline = reward_of(parsed, QUALITY, RewardConfig(), T0)
    worker = _worker_reward(parsed.reply, QUALITY, events)
    assert offline.components == pytest.approx(worker.components)
    assert (offline.total, offline.has_signal, offline.unsafe, offline.vetoed) == pytest.approx(
        (worker.total, worker.has_signal, worker.unsafe, worker.vetoed))


def test_every_user_signal_of_the_reward_can_be_given():
    cfg_names = {f[:-len("_weight")] for f in RewardConfig.__dataclass_fields__ if f.endswith("_weight")}
    assert set(SIGNALS) - {"safety"} <= cfg_names
    missing = cfg_names - set(SIGNALS) - {"repetition", "empty", "truncated", "relevance", "fluency", "model_reward",
                                          "anomaly", "unsafe_voter"}
    assert missing == set(), f"give these a line signal in worker/rewards/offline.py: {missing}"


def test_an_empty_or_cut_off_reply_gets_its_guard_and_no_base_scores():
    parsed = parse_line(json.dumps({"prompt": "Hi", "reply": "", "signals": {"thumbs": 1}}), 2)
    b = reward_of(parsed, {"unsafe": 0.0, "safety_scorer": "x", "absent": "empty reply"}, RewardConfig(), T0)
    row = result_row(parsed, {"unsafe": 0.0, "safety_scorer": "x", "absent": "empty reply"}, b)
    assert b.components["empty"] == -1.0 and row["relevance"] is None and row["fluency"] is None
    cut = parse_line(line(finish_reason="length"), 3)
    assert reward_of(cut, QUALITY, RewardConfig(), T0).components["truncated"] == pytest.approx(-0.3)


def test_the_json_row_leads_with_the_documented_keys():
    parsed = parse_line(line(id=17, signals={"thumbs": 1}), 5)
    row = result_row(parsed, QUALITY, reward_of(parsed, QUALITY, RewardConfig(), T0))
    assert list(row)[:6] == ["line", "id", "reward", "unsafe", "relevance", "fluency"]
    assert (row["line"], row["id"], row["unsafe"], row["relevance"], row["fluency"]) == (5, 17, 0.02, 1.3, -0.4)
    assert row["raw_sum"] == pytest.approx(1.0 - 0.02 + 0.2 * 0.65 - 0.1 * 0.2, abs=1e-4) and row["reward"] == 1.0
    assert row["relevance_pmi"] == 0.8 and row["safety_scorer"] == "alt-profanity-check"
    json.dumps(row, allow_nan=False)
