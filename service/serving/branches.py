"""A conversation as a tree. Pure: no I/O.

Every reply records `parent_id`, the reply its user message followed ("" for the first turn),
and `client_msg_id`, the user message it answers. So:

* the replies to one message are *siblings* (a regeneration adds one; the two candidates of a
  compare turn are siblings too, but they are weighed by `choose`, not as siblings here);
* an edited message is a new message with the same parent: a new branch from that point;
* the *branch* ending at a reply is the chain of parents up to the first turn: the history the
  model sees when the next message follows that reply, and what the page shows.

Replies logged before parents were recorded have no `parent_id`: their parent is taken from the
session's history list (the turn before theirs), which is what those sessions were.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

MAX_DEPTH = 10_000  # a loop in corrupted data must not hang the server


@dataclass(frozen=True)
class Node:
    reply_id: str
    parent_id: str             # "" = first turn
    msg_id: str                # client_msg_id of the user message it answers ("" if unknown)
    candidates: tuple[str, ...] = ()


def node_from_fields(reply_id: str, parent_id: str | None, msg_id: str | None, candidates: str | None,
                     turn: str | None, history: list[str]) -> Node:
    """A node from a reply hash's fields (strings or None); `history` is the session's current
    branch (reply ids), used only for replies logged without a parent."""
    if parent_id is None:
        if reply_id in history:
            i = history.index(reply_id)
            parent_id = history[i - 1] if i > 0 else ""
        else:
            t = int(turn) if turn not in (None, "") else 0
            parent_id = history[t - 1] if 0 < t <= len(history) else ""
    try:
        cands = tuple(json.loads(candidates)) if candidates else ()
    except (ValueError, TypeError):
        cands = ()
    return Node(reply_id, parent_id, msg_id or "", cands)


def branch_to(nodes: dict[str, Node], reply_id: str) -> list[str]:
    """Reply ids from the first turn down to `reply_id` (inclusive); [] for "" or an unknown id."""
    out: list[str] = []
    seen: set[str] = set()
    rid = reply_id
    while rid and rid in nodes and rid not in seen and len(out) < MAX_DEPTH:
        seen.add(rid)
        out.append(rid)
        rid = nodes[rid].parent_id
    return out[::-1]


def siblings(nodes: dict[str, Node], reply_id: str) -> list[str]:
    """Other answers to the same user message after the same parent (not the reply's own
    compare candidates), in the order they were generated."""
    me = nodes.get(reply_id)
    if me is None or not me.msg_id:
        return []
    return [n.reply_id for n in nodes.values()
            if n.reply_id != reply_id and n.parent_id == me.parent_id and n.msg_id == me.msg_id
            and n.reply_id not in me.candidates]


def preferred_how(kind: str, value) -> str | None:
    """What makes a reply the preferred one of its siblings, as words for the ledger; None when
    this feedback says nothing about preference."""
    if kind == "copy":
        return "copied it"
    if kind == "thumbs" and value == 1:
        return "thumbed it up"
    if kind == "rating" and isinstance(value, int) and value >= 4:
        return f"rated it {value}"
    return None
