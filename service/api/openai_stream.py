"""Running the candidates of one OpenAI request, and shaping what they produce: one JSON
body, or server-sent event chunks (chat and text completions differ only in shape).

The n candidates of a request run concurrently (the engine batches them) and each is logged
by ChatService as it ends. A client that goes away cancels every candidate still running;
each is still logged, with finish_reason cancelled.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from service.api.common import ApiError
from service.engine.events import EndEvent, FinishReason, TextTail, TokenEvent
from service.serving.chat import ChatService, ReplyPlan

log = logging.getLogger(__name__)
_DONE = object()
_background: set[asyncio.Task] = set()   # pumps finishing (and logging) after their client left


@dataclass
class Candidate:
    plan: ReplyPlan
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)   # rounded as the log stores them
    end: EndEvent | None = None


async def merged(chat: ChatService, plans: list[ReplyPlan]) -> AsyncIterator[tuple[int, object]]:
    """(candidate index, event) from all candidates, as they come."""
    queue: asyncio.Queue = asyncio.Queue()
    closed = False

    async def pump(i: int, plan: ReplyPlan):
        try:
            async for ev in chat.stream(plan):
                if closed and plan.handle is not None:
                    plan.handle.cancel()
                queue.put_nowait((i, ev))
        except Exception as exc:  # handed to the reader, who reports it
            queue.put_nowait((i, exc))
        finally:
            queue.put_nowait((i, _DONE))

    tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(plans)]
    for t in tasks:
        _background.add(t)
        t.add_done_callback(_background.discard)
    try:
        left = len(plans)
        while left:
            i, ev = await queue.get()
            if ev is _DONE:
                left -= 1
            elif isinstance(ev, Exception):
                raise ev
            else:
                yield i, ev
    finally:  # the client left, or one candidate failed: free the engine now
        closed = True
        for p in plans:
            if p.handle is not None:
                p.handle.cancel()


def start_all(chat: ChatService, plans: list[ReplyPlan]) -> None:
    """Admission before the status line: a refusal (server busy 503, this user's limit 429) is
    an HTTP status, never a stream that breaks after a 200. All candidates or none."""
    try:
        for p in plans:
            chat.start(p)
    except BaseException:
        for p in plans:
            if p.handle is not None:
                p.handle.cancel()
        raise


def add_event(c: Candidate, ev) -> None:
    if isinstance(ev, TokenEvent):
        c.token_ids.append(ev.token_id)
        c.logprobs.append(round(ev.logprob, 6))   # exactly the stored value (chat.py _record)
        c.text += ev.text
    elif isinstance(ev, TextTail):
        c.text += ev.text
    elif isinstance(ev, EndEvent):
        c.end = ev


def generation_failed(c: Candidate) -> ApiError:
    end = c.end
    if end.finish_reason == FinishReason.CANCELLED:
        return ApiError(503, "cancelled", f"reply {c.plan.reply_id} was cancelled (the server is shutting down?): "
                        "retry", headers={"Retry-After": "2"})
    return ApiError(500, "generation_failed", f"generation failed: {end.error or 'unknown error'}; reply "
                    f"{c.plan.reply_id} was logged with finish_reason error: retry, or report it with that id")


async def run_all(chat: ChatService, plans: list[ReplyPlan]) -> list[Candidate]:
    """Every candidate to its end; a failed one is a 500 (never a 200 with finish_reason stop)."""
    cands = [Candidate(p) for p in plans]
    async for i, ev in merged(chat, plans):
        add_event(cands[i], ev)
    for c in cands:
        if c.end is None or c.end.finish_reason not in (FinishReason.STOP, FinishReason.LENGTH):
            if c.end is None:
                raise ApiError(500, "generation_failed", f"reply {c.plan.reply_id} ended without an end event")
            raise generation_failed(c)
    return cands


def usage(plans: list[ReplyPlan], completion_tokens: int) -> dict:
    prompt = len(plans[0].prompt_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


def token_logprob(tok, token_id: int, logprob: float) -> dict:
    text = tok.decode([token_id], skip_special_tokens=False)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8")), "top_logprobs": []}


class ChatShape:
    """chat.completion(.chunk) bodies."""
    object, chunk_object = "chat.completion", "chat.completion.chunk"

    def __init__(self, tok, logprobs: bool):
        self.tok, self.logprobs = tok, logprobs

    def choice(self, i: int, c: Candidate) -> dict:
        lp = {"content": [token_logprob(self.tok, t, x) for t, x in zip(c.token_ids, c.logprobs)],
              "refusal": None} if self.logprobs else None
        return {"index": i, "message": {"role": "assistant", "content": c.text, "refusal": None},
                "finish_reason": c.end.finish_reason, "logprobs": lp, "reply_id": c.plan.reply_id}

    def start(self, i: int, plan: ReplyPlan) -> dict | None:
        return {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None,
                "reply_id": plan.reply_id}

    def delta(self, i: int, plan: ReplyPlan, text: str, token: tuple[int, float] | None) -> dict | None:
        if not text and not (token and self.logprobs):
            return None
        lp = {"content": [token_logprob(self.tok, *token)], "refusal": None} if token and self.logprobs else None
        return {"index": i, "delta": {"content": text}, "logprobs": lp, "finish_reason": None,
                "reply_id": plan.reply_id}

    def end(self, i: int, plan: ReplyPlan, reason: str) -> dict:
        return {"index": i, "delta": {}, "logprobs": None, "finish_reason": reason, "reply_id": plan.reply_id}


class CompletionShape:
    """text_completion bodies (the same object for chunks, as OpenAI)."""
    object = chunk_object = "text_completion"

    def __init__(self, tok, logprobs: bool):
        self.tok, self.logprobs = tok, logprobs

    def _lp(self, token_ids, logprobs, offset: int) -> dict:
        tokens = [self.tok.decode([t], skip_special_tokens=False) for t in token_ids]
        offsets, at = [], offset
        for t in tokens:
            offsets.append(at)
            at += len(t)
        return {"tokens": tokens, "token_logprobs": list(logprobs), "top_logprobs": None, "text_offset": offsets}

    def choice(self, i: int, c: Candidate) -> dict:
        return {"index": i, "text": c.text, "finish_reason": c.end.finish_reason, "reply_id": c.plan.reply_id,
                "logprobs": self._lp(c.token_ids, c.logprobs, 0) if self.logprobs else None}

    def start(self, i: int, plan: ReplyPlan) -> dict | None:
        return None

    def delta(self, i: int, plan: ReplyPlan, text: str, token: tuple[int, float] | None) -> dict | None:
        if not text and not (token and self.logprobs):
            return None
        lp = self._lp([token[0]], [token[1]], 0) if token and self.logprobs else None
        return {"index": i, "text": text, "logprobs": lp, "finish_reason": None, "reply_id": plan.reply_id}

    def end(self, i: int, plan: ReplyPlan, reason: str) -> dict:
        return {"index": i, "text": "", "logprobs": None, "finish_reason": reason, "reply_id": plan.reply_id}


def body(shape, model: str, plans: list[ReplyPlan], cands: list[Candidate], created: int) -> dict:
    return {"id": plans[0].reply_id, "object": shape.object, "created": created, "model": model,
            "choices": [shape.choice(i, c) for i, c in enumerate(cands)],
            "usage": usage(plans, sum(c.end.n_tokens for c in cands)), "system_fingerprint": None,
            "rewardloop": info(plans)}


def info(plans: list[ReplyPlan]) -> dict:
    return {"session_id": plans[0].session_id, "adapter_version": plans[0].adapter_version,
            "reply_ids": [p.reply_id for p in plans]}


async def sse(chat, shape, model: str, plans: list[ReplyPlan], include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(choices: list[dict], **extra) -> str:
        out = {"id": plans[0].reply_id, "object": shape.chunk_object, "created": created, "model": model,
               "system_fingerprint": None, "choices": choices}
        if include_usage:
            out["usage"] = None
        out.update(extra)
        return f"data: {json.dumps(out)}\n\n"

    def error_event(status: int, code: str, message: str) -> str:
        err = {"message": message, "type": "server_error", "param": None, "code": code, "status": status}
        return f"event: error\ndata: {json.dumps({'error': err})}\n\n"

    for i, p in enumerate(plans):
        if (c := shape.start(i, p)) is not None:
            yield chunk([c])
    tokens = 0
    try:
        async for i, ev in merged(chat, plans):
            plan = plans[i]
            if isinstance(ev, TokenEvent):
                c = shape.delta(i, plan, ev.text, (ev.token_id, round(ev.logprob, 6)))
            elif isinstance(ev, TextTail):
                c = shape.delta(i, plan, ev.text, None)
            else:
                if ev.finish_reason not in ("stop", "length"):   # mid-stream: the status is sent already
                    err = generation_failed(Candidate(plan, end=ev))
                    yield error_event(err.status, err.code, err.message)
                    return
                tokens += ev.n_tokens
                c = shape.end(i, plan, ev.finish_reason)
            if c is not None:
                yield chunk([c])
    except Exception as exc:  # e.g. storage gone while logging: the client hears it, the log has the trace
        log.exception("streaming a completion failed")
        yield error_event(500, "internal", f"streaming failed ({type(exc).__name__}: {exc}); retry")
        return
    if include_usage:
        yield chunk([], usage=usage(plans, tokens))
    yield "data: [DONE]\n\n"
