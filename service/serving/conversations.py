"""A user's own conversations, as the chat page lists and reopens them: titles, times, the
whole tree of replies with their versions, and the user's feedback on each.

Everything is read through core.history.History (Redis, then the Parquet archive), the one
reader of logged data, so a conversation reads the same before and after the archive moved it.
Only the owner sees a conversation: every read checks the session's user and answers None (the
API's 404) for anyone else. Blocking (redis-py, pyarrow): the API calls it from a thread.
"""
from __future__ import annotations

import json

from core.history import History
from core.records import ReplyRecord, SessionRecord
from service.serving.branches import node_from_fields

MAX_LISTED = 5_000   # conversations one list call looks at (a user's newest by creation)
MAX_TITLE_CHARS = 120
STATE_KINDS = ("thumbs", "rating", "choose", "reasons")


class TitleError(ValueError):
    """A rename that cannot be stored; the message says what is allowed."""


def check_title(title) -> str:
    if not isinstance(title, str) or not title.strip():
        raise TitleError("'title' must be a non-empty string")
    title = " ".join(title.split())
    if len(title) > MAX_TITLE_CHARS:
        raise TitleError(f"title is {len(title)} characters; the limit is {MAX_TITLE_CHARS}")
    return title


def summary(s: SessionRecord, titles: dict[str, str]) -> dict:
    """titles: the user's renames (session_titles), which win over the first message's title."""
    return {"session_id": s.session_id, "title": titles.get(s.session_id) or s.title or "",
            "created": s.created, "last_active": s.last_active, "replies": len(s.replies or []),
            "turns": len(s.history or [])}


def feedback_state(meta: dict) -> dict[str, dict]:
    """reply_id -> what the page shows pressed: the user's last thumbs and rating, chosen or
    rejected in a compare, the last reasons given (the server keeps them as `fb:{reply}:{kind}`
    fields of the session's meta hash, so a reload reads no event stream). Pure."""
    out: dict[str, dict] = {}
    for name, raw in meta.items():
        if not name.startswith("fb:"):
            continue
        rid, _, kind = name[3:].rpartition(":")
        if kind not in STATE_KINDS or not rid:
            continue
        try:
            out.setdefault(rid, {})[kind] = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            continue
    return out


def reply_view(rec: ReplyRecord, branch: list[str], state: dict) -> dict:
    """One reply as the page needs it: the tree (parent, message), text, version, how it ended."""
    parent = rec.parent_id
    return {"reply_id": rec.reply_id, "client_msg_id": rec.client_msg_id,
            "parent_id": node_from_fields(rec.reply_id, parent, None, None, rec.turn, branch).parent_id,
            "user_text": rec.user_text or "", "text": rec.text or "", "adapter_version": rec.adapter_version,
            "finish_reason": rec.finish_reason, "n_tokens": rec.n_tokens, "candidates": rec.candidates,
            "replaces": rec.replaces, "turn": rec.turn, "queued_at": rec.queued_at,
            "ended_at": rec.ended_at, "feedback": state.get(rec.reply_id, {})}


class Conversations:
    def __init__(self, history: History):
        self.history = history

    def owned(self, user_id: str, session_id: str) -> SessionRecord | None:
        s = self.history.session(session_id)
        return s if s is not None and s.user_id == user_id else None

    def _titles(self, user_id: str) -> dict[str, str]:
        return self.history.r.hgetall(self.history.k.session_titles(user_id))

    def list(self, user_id: str, query: str | None = None, limit: int = 200) -> list[dict]:
        """The user's conversations with at least one reply, newest activity first; `query`
        keeps those whose title or text contains it (case-insensitive)."""
        sessions = [s for s in self.history.sessions(user=user_id, limit=MAX_LISTED)
                    if s.user_id == user_id and s.replies]
        sessions.sort(key=lambda s: s.last_active or s.created or 0.0, reverse=True)
        titles = self._titles(user_id)
        if query:
            sessions = self._search(sessions, query.casefold(), titles)
        return [summary(s, titles) for s in sessions[:limit]]

    def _search(self, sessions: list[SessionRecord], q: str, titles: dict[str, str]) -> list[SessionRecord]:
        hits = {s.session_id for s in sessions if q in summary(s, titles)["title"].casefold()}
        rest = [s for s in sessions if s.session_id not in hits]
        texts = self.history.texts(rid for s in rest for rid in s.replies)
        for s in rest:
            for rid in s.replies:
                user_text, text = texts.get(rid, ("", ""))
                if q in user_text.casefold() or q in text.casefold():
                    hits.add(s.session_id)
                    break
        return [s for s in sessions if s.session_id in hits]

    def get(self, user_id: str, session_id: str) -> dict | None:
        """The whole conversation: every reply in generation order (the tree: parent_id,
        client_msg_id), the branch on screen, and the user's own feedback on each reply."""
        s = self.owned(user_id, session_id)
        if s is None:
            return None
        branch = list(s.history or [])
        replies = self.history.replies(s.replies, self.history.session_day(s))
        state = feedback_state(s.extra)
        views = [reply_view(replies[rid], branch, state) for rid in s.replies if rid in replies]
        return {**summary(s, self._titles(user_id)), "branch": branch, "replies": views}

    def rename(self, user_id: str, session_id: str, title: str) -> dict | None:
        title = check_title(title)
        if self.owned(user_id, session_id) is None:
            return None
        self.history.r.hset(self.history.k.session_titles(user_id), session_id, title)
        return {"session_id": session_id, "title": title}
