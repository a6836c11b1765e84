"""A user's own conversations, as the chat page lists and reopens them: titles, times, the
whole tree of replies with their versions, and the user's feedback on each.

Only the owner sees a conversation: every read checks the session's user and answers None
(the API's 404) for anyone else. The reads go through `_metas` and `_records` alone, so the
history reader that spans Redis and the archive can replace them in one place.
"""
from __future__ import annotations

import json

from service.serving.branches import node_from_fields
from service.serving.store import ChatStore

MAX_LISTED = 5_000   # conversations one list call looks at (a user's newest by creation)
MAX_TITLE_CHARS = 120
META_FIELDS = ("user_id", "title", "created", "last_active")
REPLY_FIELDS = ("parent_id", "client_msg_id", "user_text", "text", "adapter_version", "finish_reason",
                "n_tokens", "candidates", "replaces", "turn", "queued_at", "ended_at")


class TitleError(ValueError):
    """A rename that cannot be stored; the message says what is allowed."""


def check_title(title) -> str:
    if not isinstance(title, str) or not title.strip():
        raise TitleError("'title' must be a non-empty string")
    title = " ".join(title.split())
    if len(title) > MAX_TITLE_CHARS:
        raise TitleError(f"title is {len(title)} characters; the limit is {MAX_TITLE_CHARS}")
    return title


def _dec(v: bytes | None) -> str | None:
    return v.decode() if v is not None else None


def _num(v: str | None, cast=float):
    try:
        return cast(float(v)) if v not in (None, "") else None
    except ValueError:
        return None


class Conversations:
    def __init__(self, store: ChatStore):
        self.r, self.k = store.r, store.k

    # --- the data access: one place ------------------------------------------------------
    async def _metas(self, session_ids: list[str]) -> list[dict | None]:
        """Meta, reply count and branch length of each session (None: no such session)."""
        async with self.r.pipeline(transaction=False) as p:
            for sid in session_ids:
                p.hmget(self.k.session_meta(sid), *META_FIELDS)
                p.llen(self.k.session_replies(sid))
                p.llen(self.k.session(sid))
            rows = await p.execute()
        out = []
        for i, sid in enumerate(session_ids):
            meta, n_replies, n_turns = rows[3 * i:3 * i + 3]
            user, title, created, last = (_dec(v) for v in meta)
            out.append(None if user is None else {
                "session_id": sid, "user_id": user, "title": title or "", "created": _num(created),
                "last_active": _num(last), "replies": int(n_replies), "turns": int(n_turns)})
        return out

    async def _records(self, session_id: str) -> tuple[list[dict], list[str], dict]:
        """(every reply of the session in generation order, the current branch, feedback state)."""
        async with self.r.pipeline(transaction=False) as p:
            p.lrange(self.k.session_replies(session_id), 0, -1)
            p.lrange(self.k.session(session_id), 0, -1)
            p.hgetall(self.k.feedback_state(session_id))
            ids, branch, state = await p.execute()
        ids = [i.decode() for i in ids]
        async with self.r.pipeline(transaction=False) as p:
            for rid in ids:
                p.hmget(self.k.reply(rid), *REPLY_FIELDS)
            rows = await p.execute()
        replies = [{"reply_id": rid, **{f: _dec(v) for f, v in zip(REPLY_FIELDS, row)}} for rid, row in zip(ids, rows)]
        return replies, [b.decode() for b in branch], {k.decode(): json.loads(v) for k, v in state.items()}

    # --- what the API answers -----------------------------------------------------------------
    async def owned(self, user_id: str, session_id: str) -> dict | None:
        [meta] = await self._metas([session_id])
        return meta if meta is not None and meta["user_id"] == user_id else None

    async def list(self, user_id: str, query: str | None = None, limit: int = 200) -> list[dict]:
        """The user's conversations with at least one reply, newest activity first; `query`
        keeps those whose title or text contains it (case-insensitive)."""
        ids = [i.decode() for i in await self.r.zrevrange(self.k.user_sessions(user_id), 0, MAX_LISTED - 1)]
        metas = [m for m in await self._metas(ids) if m and m["user_id"] == user_id and m["replies"]]
        metas.sort(key=lambda m: m["last_active"] or 0, reverse=True)
        if query:
            metas = await self._search(metas, query.casefold())
        for m in metas:
            del m["user_id"]
        return metas[:limit]

    async def _search(self, metas: list[dict], q: str) -> list[dict]:
        hits = {m["session_id"] for m in metas if q in m["title"].casefold()}
        rest = [m["session_id"] for m in metas if m["session_id"] not in hits]
        async with self.r.pipeline(transaction=False) as p:
            for sid in rest:
                p.lrange(self.k.session_replies(sid), 0, -1)
            lists = await p.execute()
        async with self.r.pipeline(transaction=False) as p:
            for rids in lists:
                for rid in rids:
                    p.hmget(self.k.reply(rid.decode()), "user_text", "text")
            texts = iter(await p.execute())
        for sid, rids in zip(rest, lists):
            found = False
            for _ in rids:
                u, a = next(texts)
                found = found or q in (u or b"").decode().casefold() or q in (a or b"").decode().casefold()
            if found:
                hits.add(sid)
        return [m for m in metas if m["session_id"] in hits]

    async def get(self, user_id: str, session_id: str) -> dict | None:
        """The whole conversation: every reply (the tree: parent_id, client_msg_id), the branch
        on screen, and the user's own feedback on each reply."""
        meta = await self.owned(user_id, session_id)
        if meta is None:
            return None
        replies, branch, state = await self._records(session_id)
        for rep in replies:   # replies logged before parents were recorded get theirs from the branch
            rep["parent_id"] = node_from_fields(rep["reply_id"], rep["parent_id"], None, None, rep["turn"],
                                                branch).parent_id
            rep["n_tokens"] = _num(rep["n_tokens"], int)
            rep["turn"] = _num(rep["turn"], int)
            for f in ("queued_at", "ended_at"):
                rep[f] = _num(rep[f])
            rep["candidates"] = json.loads(rep["candidates"]) if rep["candidates"] else None
            rep["feedback"] = {kind: state[f"{rep['reply_id']}|{kind}"]
                               for kind in ("thumbs", "rating", "choose", "reasons")
                               if f"{rep['reply_id']}|{kind}" in state}
        del meta["user_id"]
        return {**meta, "branch": branch, "replies": replies}

    async def rename(self, user_id: str, session_id: str, title: str) -> dict | None:
        title = check_title(title)
        if await self.owned(user_id, session_id) is None:
            return None
        await self.r.hset(self.k.session_meta(session_id), "title", title)
        return {"session_id": session_id, "title": title}
