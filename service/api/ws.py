"""`/ws/chat`: the websocket as an explicit state machine.

  AWAIT_HELLO --hello ok--> READY <--reply_end-- STREAMING
                                   --user_message-->

One reply streams at a time per connection. A second user_message while a reply
streams is refused with `busy` (send `stop` first, or wait for reply_end): the page
disables its input while streaming, and queueing would hide a stuck client.
Feedback and stop are handled while a reply streams.

A message names the reply it follows (`parent_id`): the model sees that branch, and the
branch becomes the session's conversation (service/serving/branching.py). `select` switches
branches without sending anything (the page's sibling arrows).
"""
from __future__ import annotations

import asyncio
import enum
import logging
import random
import time

from fastapi import WebSocket, WebSocketDisconnect
from redis.exceptions import RedisError

from core.settings import ServerSettings
from service.engine.core import EndEvent, QueuedEvent
from service.serving.auth import TokenError, User, verify_token
from service.serving.branching import Branching
from service.serving.chat import ChatService, Overloaded, ReplyPlan, TurnRefused
from service.serving.feedback import FeedbackService
from service.serving.protocol import (
    CLOSE_AUTH_FAILED,
    CLOSE_HELLO_TIMEOUT,
    Feedback,
    Hello,
    ProtocolError,
    Select,
    Stop,
    UserMessage,
    parse_client_frame,
    server_error,
)

log = logging.getLogger(__name__)
HELLO_TIMEOUT_S = 30
TITLE_CHARS = 60


def unavailable_error(ref: str | None) -> dict:
    return server_error("unavailable", "storage is unavailable for a moment; nothing was recorded: retry in a "
                        "few seconds (same feedback_id)", ref)


def overloaded_error(err: Overloaded, ref: str | None) -> dict:
    return {**server_error(err.code, err.message, ref), "retry_after": err.retry_after}


class State(enum.Enum):
    AWAIT_HELLO = "await_hello"
    READY = "ready"
    STREAMING = "streaming"
    CLOSED = "closed"


class ChatConnection:
    def __init__(self, ws: WebSocket, chat: ChatService, feedback: FeedbackService, settings: ServerSettings, secret: str):
        self.ws, self.chat, self.feedback, self.settings, self.secret = ws, chat, feedback, settings, secret
        self.state = State.AWAIT_HELLO
        self.user: User | None = None
        self.session_id: str | None = None
        self.send_lock = asyncio.Lock()
        self.current: list[ReplyPlan] = []      # replies of the turn being streamed
        self.task: asyncio.Task | None = None
        self.pending_acks: set[asyncio.Task] = set()   # feedback being written; acked when durable
        self.branching = Branching(chat.store)

    async def send(self, frame: dict) -> None:
        if self.state is State.CLOSED:
            return
        async with self.send_lock:
            try:
                await self.ws.send_json(frame)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.state = State.CLOSED  # the reader notices too; generation is cancelled there

    async def run(self) -> None:
        await self.ws.accept()
        metrics = getattr(self.chat, "metrics", None)
        if metrics:
            metrics.ws_connections.inc()
        try:
            while True:
                timeout = HELLO_TIMEOUT_S if self.state is State.AWAIT_HELLO else None
                try:
                    raw = await asyncio.wait_for(self.ws.receive_text(), timeout)
                except TimeoutError:
                    await self.ws.close(CLOSE_HELLO_TIMEOUT, "no hello within 30 s")
                    return
                except KeyError:  # a binary frame: starlette looks for 'text'
                    await self.send(server_error("bad_json", "binary frames are not accepted: send JSON text"))
                    continue
                frame = None
                try:
                    frame = parse_client_frame(raw, self.settings.max_message_bytes)
                    await self.handle(frame)
                except ProtocolError as err:
                    await self.send(err.frame())
                except Overloaded as err:   # come back later: busy (queue full) or rate_limited (this user)
                    await self.send(overloaded_error(err, getattr(frame, "client_msg_id", None)))
                except RedisError as exc:  # Redis away for a moment: say so; the client retries
                    log.warning("redis unavailable while handling a frame: %s", exc)
                    ref = getattr(frame, "feedback_id", None) or getattr(frame, "client_msg_id", None)
                    await self.send(unavailable_error(ref))
                if self.state is State.CLOSED:
                    return
        except WebSocketDisconnect:
            pass
        finally:
            if metrics:
                metrics.ws_connections.dec()
            self.state = State.CLOSED
            for plan in self.current:  # a client that left frees the engine at once
                if plan.handle is not None:
                    plan.handle.cancel()

    async def handle(self, frame) -> None:
        if isinstance(frame, Hello):
            return await self.on_hello(frame)
        if self.state is State.AWAIT_HELLO:
            raise ProtocolError("not_ready", "send hello {token} first (get a token from POST /api/session)")
        if isinstance(frame, UserMessage):
            return await self.on_user_message(frame)
        if isinstance(frame, Feedback):
            return await self.on_feedback(frame)
        if isinstance(frame, Stop):
            return await self.on_stop(frame)
        if isinstance(frame, Select):
            self._require_idle()
            branch = await self.branching.select(self.user, self.session_id, frame.reply_id)
            await self.send({"type": "selected", "reply_id": frame.reply_id, "branch": branch})

    async def on_hello(self, frame: Hello) -> None:
        if self.state is not State.AWAIT_HELLO:
            raise ProtocolError("already_ready", "hello was already accepted on this connection")
        try:
            self.user = verify_token(self.secret, frame.token)
        except TokenError as err:
            await self.send(server_error("unauthorized", str(err)))
            self.state = State.CLOSED
            await self.ws.close(CLOSE_AUTH_FAILED, "auth failed")
            return
        if frame.session_id:
            meta = await self.chat.store.session_meta(frame.session_id)
            if meta and meta.user_id == self.user.user_id:
                self.session_id = meta.session_id
        if self.session_id is None:  # unknown or someone else's: start a fresh one
            self.session_id = (await self.chat.store.create_session(self.user.user_id)).session_id
        self.state = State.READY
        await self.send({"type": "ready", "session_id": self.session_id, "user_id": self.user.user_id})

    def _require_idle(self) -> None:
        if self.state is State.STREAMING:
            ids = ", ".join(p.reply_id for p in self.current)
            raise ProtocolError("busy", f"a reply is still streaming ({ids}): wait for reply_end or send stop first")

    async def on_user_message(self, msg: UserMessage) -> None:
        self._require_idle()
        self.chat.check_admission(self.user)   # refused before anything is recorded
        if msg.session_id and msg.session_id != self.session_id:
            meta = await self.chat.store.session_meta(msg.session_id)
            if not meta or meta.user_id != self.user.user_id:
                raise ProtocolError("unknown_session", f"session {msg.session_id!r} is not yours or does not "
                                    "exist: omit session_id to use this connection's session", msg.client_msg_id)
            self.session_id = meta.session_id
        branch, tree = await self.branching.for_message(self.session_id, msg)
        if branch is None:   # no parent named: after the session's current branch
            branch = await self.chat.store.history(self.session_id)
        if branch:  # the user wrote again: the previous reply earns a continuation signal (once)
            await self.feedback.record_continuation(self.user, branch[-1][0])
        else:
            await self.chat.store.set_title_once(self.session_id, title_of(msg.text))
        await self.chat.store.add_event({"kind": "user_message", "session_id": self.session_id,
                                         "user_id": self.user.user_id, "client_msg_id": msg.client_msg_id,
                                         "turn": len(branch), "parent_id": msg.parent_id, "edit_of": msg.edit_of,
                                         "server_time": repr(time.time())})
        if tree:
            await self.branching.after_message(self.user, self.session_id, msg, tree)
        n = msg.candidates
        if n == 1 and self.settings.candidate_share > 0 and random.random() < self.settings.candidate_share:
            n = 2
        try:
            pinned = self.chat.check_pinned(msg.adapter_version)
        except TurnRefused as err:
            raise ProtocolError(err.code, err.message, msg.client_msg_id) from None
        await self._start_turn(msg.text, n, client_msg_id=msg.client_msg_id, adapter_version=pinned, branch=branch)

    async def _start_turn(self, text: str, n: int, *, client_msg_id=None, replaces=None,
                          history_index=None, upto_turn=None, adapter_version=None, branch=None) -> None:
        plans = []
        try:
            for i in range(n):
                params = self.chat.default_params()
                plans.append(await self.chat.plan_session_turn(
                    self.user, self.session_id, text, params=params, upto_turn=upto_turn,
                    client_msg_id=client_msg_id, replaces=replaces, adapter_version=adapter_version,
                    in_history=(i == 0), history_index=history_index, branch=branch))
        except TurnRefused as err:
            raise ProtocolError(err.code, err.message, client_msg_id) from None
        if n > 1:
            ids = [p.reply_id for p in plans]
            for p in plans:
                p.candidates = ids
        self.current = plans
        self.state = State.STREAMING
        self.task = asyncio.create_task(self._stream_all(plans))

    async def _stream_all(self, plans: list[ReplyPlan]) -> None:
        plan = plans[0]
        try:
            for plan in plans:
                if self.state is State.CLOSED:
                    break
                await self._stream_one(plan)
        except RedisError as exc:  # the reply could not be logged (Redis away past the save wait)
            log.warning("redis unavailable while logging reply %s: %s", plan.reply_id, exc)
            await self.send(server_error("unavailable", "storage is unavailable: this reply could not be logged "
                                         "(no feedback on it is possible); send the message again in a few "
                                         "seconds", plan.reply_id))
        except Exception as exc:  # logged, and the client is told; the connection lives on
            log.exception("streaming failed")
            await self.send(server_error("internal", f"generation failed: {exc}; try again"))
        finally:
            self.current = []
            if self.state is State.STREAMING:
                self.state = State.READY

    async def _stream_one(self, plan: ReplyPlan) -> None:
        try:
            self.chat.start(plan)   # a refusal comes before reply_start: nothing was promised
        except Overloaded as err:
            await self.send(overloaded_error(err, plan.client_msg_id))
            return
        await self.send({"type": "reply_start", "reply_id": plan.reply_id, "adapter_version": plan.adapter_version,
                         "candidates": plan.candidates, "replaces": plan.replaces, "turn": plan.turn_index,
                         "parent_id": plan.parent_id, "client_msg_id": plan.client_msg_id,
                         "history_truncated": plan.prompt.truncated, "dropped_turns": plan.prompt.dropped_turns})
        async for event in self.chat.stream(plan, queued=True):
            if self.state is State.CLOSED:
                plan.handle.cancel()
            if isinstance(event, QueuedEvent):
                await self.send({"type": "queued", "reply_id": plan.reply_id, "position": event.position})
            elif isinstance(event, EndEvent):
                if event.finish_reason == "error":   # the reply is logged; this turn alone failed
                    await self.send(server_error("generation_failed", f"generating this reply failed "
                                                 f"({event.error}); send the message again", plan.reply_id))
                await self.send({"type": "reply_end", "reply_id": plan.reply_id,
                                 "finish_reason": event.finish_reason, "n_tokens": event.n_tokens})
            elif event.text:
                await self.send({"type": "token", "reply_id": plan.reply_id, "text": event.text})

    async def on_stop(self, frame: Stop) -> None:
        for plan in self.current:
            if plan.reply_id == frame.reply_id and plan.handle is not None:
                plan.handle.cancel()
                return
        raise ProtocolError("unknown_reply", f"reply {frame.reply_id!r} is not streaming on this connection "
                            "(already ended?)", frame.reply_id)

    async def on_feedback(self, fb: Feedback) -> None:
        if fb.kind == "regenerate":
            self._require_idle()
        stored = await self.feedback.submit(fb, self.user)
        if fb.kind not in ("regenerate", "choose"):
            # Acked when durable while this loop reads on: a client with several feedbacks
            # in flight gets them written together (the write order is already fixed).
            task = asyncio.create_task(self._ack_when_stored(fb.feedback_id, stored))
            self.pending_acks.add(task)
            task.add_done_callback(self.pending_acks.discard)
            return
        # These change what happens next on this connection (a new reply, the history): in order.
        duplicate, _ = await stored
        await self.send({"type": "ack", "feedback_id": fb.feedback_id, "duplicate": duplicate})
        if fb.kind == "regenerate" and not duplicate:
            await self._regenerate(fb.reply_id)

    async def _ack_when_stored(self, feedback_id: str, stored) -> None:
        try:
            duplicate, _ = await stored
        except RedisError as exc:
            log.warning("redis unavailable while storing feedback: %s", exc)
            await self.send(unavailable_error(feedback_id))
            return
        await self.send({"type": "ack", "feedback_id": feedback_id, "duplicate": duplicate})

    async def _regenerate(self, old_reply_id: str) -> None:
        """A new reply to the same user message (a sibling): the branch to it is the history."""
        old = await self.chat.store.reply(old_reply_id)
        self.session_id = old["session_id"]
        branch = await self.branching.for_regenerate(old)
        if branch is not None:
            await self._start_turn(old["user_text"], 1, replaces=old_reply_id, branch=branch,
                                   client_msg_id=old.get("client_msg_id"))
            return
        turn = int(old["turn"])   # a reply logged before parents were recorded
        history = await self.chat.store.history(old["session_id"])
        index = turn if turn < len(history) else None
        await self._start_turn(old["user_text"], 1, replaces=old_reply_id, history_index=index, upto_turn=turn,
                               client_msg_id=old.get("client_msg_id"))


def title_of(text: str) -> str:
    """A conversation's title from its first message: the first line, at most TITLE_CHARS."""
    line = " ".join(text.strip().split("\n", 1)[0].split())
    return line if len(line) <= TITLE_CHARS else line[:TITLE_CHARS - 1].rstrip() + "…"
