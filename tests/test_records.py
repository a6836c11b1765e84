"""The typed records (core/records.py) on plain data: a stored hash decodes and encodes back to
itself, what does not parse is kept, and an archive row reads back as the same record."""
from __future__ import annotations

import json

from core.records import TABLES, EventRecord, FinalReward, ReplyRecord, RewardEntry, SessionRecord, decode_reply
from core.redis_conn import flat_fields


def _stored(fields: dict) -> dict[str, str]:
    flat = flat_fields(fields)
    return dict(zip(flat[0::2], flat[1::2]))


REPLY = {  # a stored reply hash, as service/serving/chat.py writes it (ReplyRecord.to_redis) plus a future field
    "reply_id": "rep_1", "user_id": "u", "session_id": "s", "turn": 2, "api": "ws", "client_msg_id": "m1",
    "user_text": "hi", "prompt_messages": [{"role": "user", "content": "hi"}], "prompt_ids": [1, 2, 3],
    "history_dropped": 0, "text": "hello", "token_ids": [7, 8], "logprobs": [round(-0.123456789, 6), -2.5],
    "params": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 12, "seed": 5}, "rerank": None,
    "adapter_version": "3", "model_id": "m", "queued_at": 1700000000.123, "first_token_at": 1700000000.5,
    "ended_at": 1700000001.75, "finish_reason": "stop", "n_tokens": 2, "error": None, "prefix_reused": 0,
    "peak_rows": 1, "candidates": ["rep_1", "rep_2"], "replaces": None, "stop": None, "stop_string": None,
    "client": {"user": "x"}, "opt_out": 0, "logged_at": 1700000001.8, "future_field": "kept"}


def test_a_reply_hash_round_trips_exactly():
    h = _stored(REPLY)
    rec = ReplyRecord.from_redis(h)
    assert rec.to_redis() == h
    assert rec.logprobs == [-0.123457, -2.5] and rec.turn == 2 and rec.extra == {"future_field": "kept"}
    assert ReplyRecord.from_redis({k.encode(): v.encode() for k, v in h.items()}) == rec  # bytes too
    assert decode_reply(h)["prompt_ids"] == [1, 2, 3] and decode_reply(h)["future_field"] == "kept"
    assert rec.sampling().seed == 5


def test_what_does_not_parse_is_kept_as_stored():
    rec = RewardEntry.from_redis({"reply_id": "r", "state": "defaulted", "reward": "", "n_signals": "x"},
                                 signals={"ev1": json.dumps({"kind": "thumbs", "ts": 2}),
                                          "ev0": json.dumps({"kind": "dwell", "ts": 1})})
    assert rec.reward is None and rec.extra == {"reward": "", "n_signals": "x"}
    assert rec.to_redis() == {"reply_id": "r", "state": "defaulted", "reward": "", "n_signals": "x"}
    assert rec.final and rec.explicit and [s["kind"] for s in rec.signal_list()] == ["dwell", "thumbs"]


def test_archive_rows_read_back_as_the_same_records():
    import pyarrow as pa
    recs = [ReplyRecord.from_redis(_stored(REPLY)),
            SessionRecord.from_redis({"user_id": "u", "created": "1.5", "last_active": "2.5"}, session_id="s",
                                     history=["rep_1"], replies=["rep_1", "rep_2"]),
            EventRecord.from_redis({"kind": "choose", "value": "rep_2", "reply_id": "rep_1", "tags": '["clear"]'},
                                   stream_id="17-0"),
            FinalReward.from_redis({"reply_id": "rep_1", "state": "rewarded", "reward": "0.5",
                                    "components": "choose,dwell"}, stream_id="18-3")]
    for rec in recs:
        table = pa.Table.from_pylist([rec.to_row()], schema=type(rec).arrow_schema())
        assert type(rec).from_row(table.to_pylist()[0]) == rec
        assert table.schema.metadata[b"rewardloop.schema_version"] == b"1"
    assert recs[2].value == "rep_2" and recs[2].tags == ["clear"] and recs[2].explicit
    assert recs[3].explicit and recs[3].to_redis()["reward"] == "0.5"
    assert set(TABLES) == {"replies", "sessions", "events", "ledger", "rewards", "pairs"}
