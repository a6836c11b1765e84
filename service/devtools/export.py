"""Logged sessions -> training data files TRL reads. Pure: session details in, rows out.

Formats (one JSON object per line; `datasets.load_dataset("json", data_files=FILE)` loads each):

* ``jsonl`` -- the raw log: one session per line, every reply with its prompt ids, token ids,
  behavior log-probs, feedback events and reward (what `sessions show --json --raw` prints).
* ``sft``   -- ``{"messages": [...prompt messages, {"role": "assistant", ...}]}`` for each
  reply kept in the conversation (not a discarded candidate or a replaced regeneration) that
  finished normally; ``--reply-min-reward`` keeps only replies rewarded at least that much.
* ``kto``   -- ``{"prompt": [...messages], "completion": [{"role": "assistant", ...}],
  "label": bool}`` for each reply with a final reward from real user signals (state
  `rewarded`, reward != 0): label = reward > 0.
* ``dpo``   -- ``{"prompt": [...messages], "chosen": [{assistant}], "rejected": [{assistant}]}``
  for each preference pair (a pick between two candidates, a regeneration then kept, a sibling
  the user went on from, copied or rated up, from the feedback events and the workers' pairs
  stream) whose two replies answer the same prompt.
* ``feedback`` -- one row per feedback event, schema ``rewardloop.feedback/1`` (FEEDBACK_SCHEMA):
  ``{"schema", "event_id", "feedback_id", "session_id", "reply_id", "user_id", "adapter_version",
  "kind", "value", "tags", "comment", "how", "derived", "server_time", "client_time"}``; ``kind``
  is thumbs, rating, choose, copy, regenerate, dwell, reasons (tags and comment only), or one
  the server or workers derived (continuation, abandon, sibling, edited; ``derived`` true).

The prompt is the conversation exactly as served (system message and the turns that fit),
as a conversational messages list. With ``meta=True`` rows also carry reply_id, session_id,
adapter_version and reward.
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

from worker.rewards.pairs import PreferencePair, preference_pairs

FORMATS = ("jsonl", "sft", "kto", "dpo", "feedback")
FEEDBACK_SCHEMA = "rewardloop.feedback/1"
GOOD_FINISH = ("stop", "length")


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _reward(rep: dict) -> float | None:
    rw = rep.get("reward") or {}
    return rw.get("reward") if rw.get("state") in ("rewarded", "defaulted") else None


def _usable(rep: dict) -> bool:
    return (not rep.get("missing") and isinstance(rep.get("prompt_messages"), list)
            and rep.get("finish_reason") in GOOD_FINISH and bool((rep.get("text") or "").strip())
            and not int(rep.get("opt_out") or 0))


def _meta(rep: dict) -> dict:
    return {"reply_id": rep["reply_id"], "session_id": rep.get("session_id"),
            "adapter_version": rep.get("adapter_version"), "reward": _reward(rep)}


def sft_rows(session: dict, reply_min_reward: float | None = None, meta: bool = False) -> Iterator[dict]:
    for rep in session["replies"]:
        if not (_usable(rep) and rep.get("in_history")):
            continue
        r = _reward(rep)
        if reply_min_reward is not None and (r is None or r < reply_min_reward):
            continue
        row = {"messages": rep["prompt_messages"] + _assistant(rep["text"])}
        yield {**row, **_meta(rep)} if meta else row


def kto_rows(session: dict, meta: bool = False) -> Iterator[dict]:
    for rep in session["replies"]:
        rw = rep.get("reward") or {}
        if not _usable(rep) or rw.get("state") != "rewarded" or not rw.get("reward"):
            continue
        row = {"prompt": rep["prompt_messages"], "completion": _assistant(rep["text"]),
               "label": bool(rw["reward"] > 0)}
        yield {**row, **_meta(rep)} if meta else row


def session_pairs(session: dict) -> list[PreferencePair]:
    """The session's preference pairs: its choose events and the pairs stream the reward worker
    wrote, one pair per two replies (worker/rewards/pairs.py owns the rule)."""
    def picks(kind: str) -> list[tuple[str, str]]:
        return [(rep["reply_id"], ev["value"]) for rep in session["replies"] for ev in rep.get("events", [])
                if ev["kind"] == kind and ev.get("role") != "rejected" and isinstance(ev.get("value"), str)]
    stored = [(p["chosen_id"], p["rejected_id"], p.get("source", "")) for p in session.get("pairs", [])]
    siblings = [(a, b, "sibling") for a, b in picks("sibling")]
    return preference_pairs(choices=picks("choose"), derived=stored + siblings)


def dpo_rows(session: dict, meta: bool = False) -> Iterator[dict]:
    by_id = {rep["reply_id"]: rep for rep in session["replies"]}
    for pair in session_pairs(session):
        chosen_id, rejected_id, source = pair.chosen_id, pair.rejected_id, pair.source
        c, r = by_id.get(chosen_id), by_id.get(rejected_id)
        if c is None or r is None or not (_usable(c) and _usable(r)):
            continue
        if c["prompt_messages"] != r["prompt_messages"]:
            continue  # not answers to the same prompt: no preference between them
        row = {"prompt": c["prompt_messages"], "chosen": _assistant(c["text"]), "rejected": _assistant(r["text"])}
        if meta:
            row.update(chosen_id=chosen_id, rejected_id=rejected_id, session_id=session["session_id"],
                       source=source)
        yield row


def feedback_rows(session: dict) -> Iterator[dict]:
    """Every feedback event of the session (FEEDBACK_SCHEMA), in the order of the replies."""
    for rep in session["replies"]:
        for ev in rep.get("events", []):
            if ev.get("role") == "rejected":   # the same choose/sibling event, seen from the other reply
                continue
            yield {"schema": FEEDBACK_SCHEMA, "event_id": ev.get("event_id"), "feedback_id": ev.get("feedback_id"),
                   "session_id": session["session_id"], "reply_id": rep["reply_id"],
                   "user_id": session.get("user_id"), "adapter_version": rep.get("adapter_version"),
                   "kind": ev["kind"], "value": ev.get("value"), "tags": list(ev.get("tags") or []),
                   "comment": ev.get("comment") or "", "how": ev.get("how"), "derived": bool(ev.get("derived")),
                   "server_time": ev.get("server_time"), "client_time": ev.get("client_time")}


def rows(sessions: Iterable[dict], fmt: str, reply_min_reward: float | None = None,
         meta: bool = False) -> Iterator[dict]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for s in sessions:
        if fmt == "jsonl":
            yield s
        elif fmt == "sft":
            yield from sft_rows(s, reply_min_reward, meta)
        elif fmt == "kto":
            yield from kto_rows(s, meta)
        elif fmt == "feedback":
            yield from feedback_rows(s)
        else:
            yield from dpo_rows(s, meta)


def write_jsonl(path, items: Iterable[dict]) -> int:
    """Write one JSON object per line; returns the count. Empty file when there is nothing."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
            n += 1
    return n
