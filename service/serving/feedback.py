"""Feedback intake: validate a feedback against the reply it names, then store it
exactly once. Shared by the websocket and POST /v1/feedback."""
from __future__ import annotations

import json
import logging
import math
import time
from typing import Awaitable

from redis.exceptions import RedisError

from service.serving.auth import User
from service.serving.branching import Branching
from service.serving.protocol import Feedback, ProtocolError
from service.serving.ratelimit import KeyedBuckets
from service.serving.store import ChatStore, new_event_id

log = logging.getLogger(__name__)
# A page measures dwell with its own clock; allow this much skew before calling it impossible.
DWELL_SLACK_MS = 5_000


class FeedbackRateLimited(ProtocolError):
    """The user sent feedback faster than REWARDLOOP_FEEDBACK_RATE allows: nothing was recorded."""

    def __init__(self, wait_s: float, ref: str | None):
        super().__init__("rate_limited", f"too many feedback events from this user: retry in {wait_s * 1000:.0f} ms "
                         "with the same feedback_id (nothing was recorded)", ref)
        self.retry_after = wait_s

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))

    def frame(self) -> dict:
        return {**super().frame(), "retry_after": round(self.retry_after, 3)}


REPLY_FIELDS = ("user_id", "session_id", "adapter_version", "queued_at", "ended_at", "candidates", "turn")


class ReplyFactsCache:
    """The facts feedback validation needs never change once a reply is logged, and a page
    sends many feedbacks per reply: keep them briefly in memory to save a Redis round trip.
    Short TTL, so a forgotten user's replies stop validating soon after."""

    def __init__(self, ttl_s: float = 30.0, max_items: int = 50_000):
        self.ttl_s, self.max_items = ttl_s, max_items
        self._items: dict[str, tuple[float, dict]] = {}

    def get(self, reply_id: str, now: float) -> dict | None:
        hit = self._items.get(reply_id)
        if hit and now - hit[0] < self.ttl_s:
            return hit[1]
        return None

    def put(self, reply_id: str, facts: dict, now: float) -> None:
        if len(self._items) >= self.max_items:  # drop the oldest half; cheap and rare
            for key in list(self._items)[: self.max_items // 2]:
                del self._items[key]
        self._items[reply_id] = (now, facts)


class FeedbackService:
    def __init__(self, store: ChatStore, cache: ReplyFactsCache | None = None, metrics=None,
                 limiter: KeyedBuckets | None = None):
        self.store = store
        self.cache = cache or ReplyFactsCache()
        self.metrics = metrics  # ServerMetrics: feedback_total{kind, result}
        self.limiter = limiter  # per user, shared by the websocket and POST /v1/feedback
        self.branching = Branching(store)

    def _count(self, kind: str, result: str) -> None:
        if self.metrics:
            self.metrics.feedback.labels(kind=kind, result=result).inc()

    async def _reply_for(self, fb_reply_id: str, user: User, ref: str) -> dict:
        now = time.monotonic()
        reply = self.cache.get(fb_reply_id, now)
        if reply is None:
            reply = await self._load_reply(fb_reply_id, ref)
            self.cache.put(fb_reply_id, reply, now)
        if reply["user_id"] != user.user_id:
            raise ProtocolError("forbidden", f"reply {fb_reply_id!r} belongs to another user: feedback refused "
                                "and not recorded", ref)
        return reply

    async def _load_reply(self, fb_reply_id: str, ref: str) -> dict:
        vals = await self.store.reply_fields(fb_reply_id, *REPLY_FIELDS)
        if vals[0] is None:
            raise ProtocolError("unknown_reply", f"reply {fb_reply_id!r} does not exist: use the reply_id from "
                                "reply_start (or the `id` of a chat completion)", ref)
        return dict(zip(REPLY_FIELDS, vals))

    async def record(self, fb: Feedback, user: User, now: float | None = None) -> tuple[bool, dict]:
        """Validate and store. Returns (duplicate, stored event fields)."""
        return await (await self.submit(fb, user, now))

    async def submit(self, fb: Feedback, user: User, now: float | None = None) -> Awaitable[tuple[bool, dict]]:
        """Validate now (raises ProtocolError) and queue the write in arrival order; the
        returned awaitable gives (duplicate, fields) once the event is durable. The
        websocket reads the next frame meanwhile, so one connection's feedback is
        written in batches instead of one round trip per event."""
        now = now or time.time()
        try:
            wait = self.limiter.take(user.user_id) if self.limiter is not None else 0.0
            if wait:
                raise FeedbackRateLimited(wait, fb.feedback_id)
            return await self._submit(fb, user, now)
        except ProtocolError:
            self._count(fb.kind, "refused")
            raise

    async def _submit(self, fb: Feedback, user: User, now: float) -> Awaitable[tuple[bool, dict]]:
        reply = await self._reply_for(fb.reply_id, user, fb.feedback_id)
        if fb.kind == "choose":
            cands = json.loads(reply["candidates"]) if reply["candidates"] else []
            if fb.value == fb.reply_id or fb.reply_id not in cands or fb.value not in cands:
                raise ProtocolError("bad_value", "choose must name two different candidates of one turn: reply_id = "
                                    f"the chosen one, value = the other (candidates of this turn: {cands or 'none'})",
                                    fb.feedback_id)
        if fb.kind == "dwell":
            age_ms = (now - float(reply["queued_at"])) * 1000
            if fb.value > age_ms + DWELL_SLACK_MS:
                raise ProtocolError("bad_value", f"dwell of {fb.value} ms is longer than reply {fb.reply_id!r} has "
                                    f"existed ({age_ms:.0f} ms)", fb.feedback_id)
        since_end = (now - float(reply["ended_at"])) * 1000 if reply["ended_at"] else None
        fields = {
            "event_id": new_event_id(), "kind": fb.kind, "value": fb.value,
            "feedback_id": fb.feedback_id, "reply_id": fb.reply_id, "session_id": reply["session_id"],
            "user_id": user.user_id, "adapter_version": reply["adapter_version"],
            "client_time": fb.client_time, "server_time": repr(now),
            "since_reply_end_ms": None if since_end is None else round(since_end),
            "tags": list(fb.tags) or None, "comment": fb.comment or None,
        }
        stored = self.store.submit_once(f"{user.user_id}:{fb.feedback_id}", fields)
        return self._when_stored(fb, reply, fields, stored)

    async def _when_stored(self, fb: Feedback, reply: dict, fields: dict, stored) -> tuple[bool, dict]:
        created, _ = await stored
        self._count(fb.kind, "stored" if created else "duplicate")
        if created and fb.kind == "choose":
            # the chosen candidate becomes the session's answer for that turn
            await self.store.set_history_turn(reply["session_id"], int(reply["turn"]), fb.reply_id)
        if created:
            await self._after(fb, reply, User(fields["user_id"], 0))
        return (not created), fields

    async def _after(self, fb: Feedback, reply: dict, user: User) -> None:
        """What the page shows pressed after a reload, and what a preference among siblings says.
        The event is durable already: a failure here is logged, never turned into a refusal."""
        state: dict[tuple[str, str], object] = {}
        if fb.kind in ("thumbs", "rating"):
            state[(fb.reply_id, fb.kind)] = fb.value
        elif fb.kind == "choose":
            state.update({(fb.reply_id, "choose"): "chosen", (fb.value, "choose"): "rejected"})
        if fb.tags or fb.comment:
            state[(fb.reply_id, "reasons")] = {"tags": list(fb.tags), "comment": fb.comment}
        try:
            if state:
                await self.store.set_feedback_state(reply["session_id"], state)
            await self.branching.after_feedback(user, reply["session_id"], fb.reply_id, fb.kind, fb.value)
        except RedisError as exc:
            log.warning("feedback %s stored; its page state or sibling signal not written: %s", fb.feedback_id, exc)

    async def record_continuation(self, user: User, previous_reply_id: str, now: float | None = None) -> bool:
        """The user wrote again after `previous_reply_id`: stored once per reply, whichever
        server process or connection sees the next message first."""
        now = now or time.time()
        vals = await self.store.reply_fields(previous_reply_id, "session_id", "adapter_version", "ended_at")
        if vals[0] is None:
            return False
        gap = now - float(vals[2]) if vals[2] else None
        created, _ = await self.store.record_once(f"derived:continuation:{previous_reply_id}", {
            "event_id": new_event_id(), "kind": "continuation",
            "value": None if gap is None else round(gap, 3), "reply_id": previous_reply_id,
            "session_id": vals[0], "user_id": user.user_id, "adapter_version": vals[1],
            "server_time": repr(now), "derived": 1,
        })
        return created
