"""The reply record, in one place: what the server writes to `{prefix}reply:{id}` and how every
reader turns the stored strings back into values. Pure.

Written by service/serving/chat.py (`_record`, stored with core.redis_conn.flat_fields: lists and
dicts as JSON); read by the learner's dataset, the developer tools, replay and evaluation.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

from core.sampling import SamplingParams

JSON_FIELDS = ("prompt_messages", "prompt_ids", "token_ids", "logprobs", "params", "candidates", "rerank")
FLOAT_FIELDS = ("queued_at", "first_token_at", "ended_at", "logged_at")
INT_FIELDS = ("turn", "n_tokens", "history_dropped", "opt_out", "prefix_reused", "peak_rows")


def decode_reply(h: Mapping[str, str]) -> dict:
    """A reply hash (strings) -> typed record (lists, dicts, numbers); a field that does not
    decode is left as stored (readers decide whether they can do without it)."""
    out = dict(h)
    for k in JSON_FIELDS:
        if isinstance(out.get(k), str):
            try:
                out[k] = json.loads(out[k])
            except ValueError:
                pass
    for k in FLOAT_FIELDS:
        if out.get(k) not in (None, ""):
            try:
                out[k] = float(out[k])
            except (TypeError, ValueError):
                pass
    for k in INT_FIELDS:
        if out.get(k) not in (None, ""):
            try:
                out[k] = int(float(out[k]))
            except (TypeError, ValueError):
                pass
    return out


def sampling_params(p: Mapping | None) -> SamplingParams:
    """The sampling params a reply was drawn with, from its decoded `params` (ValueError/TypeError
    when they are not valid: the reply cannot be re-scored)."""
    p = p or {}
    return SamplingParams(temperature=float(p.get("temperature", 0.7)), top_p=float(p.get("top_p", 0.9)),
                          max_new_tokens=int(p.get("max_new_tokens", 256)), seed=int(p.get("seed", 0)))
