"""One chat turn, whichever API asked for it: build the prompt, route to an adapter
version, stream from the engine, and log the reply for learning and replay before
the caller may say the reply ended."""
from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from core.records import ReplyRecord
from core.sampling import SamplingParams
from core.settings import ServerSettings
from core.versions import is_base
from service.engine.events import EndEvent, EngineBusy, FinishReason, GenerationRequest, QueuedEvent, TextTail, TokenEvent
from service.engine.interface import EngineClient
from service.serving.auth import User
from service.serving.prompting import Prompt, build_prompt, fit_messages
from service.serving.stop_strings import StopScanner
from service.serving.store import ChatStore, new_id

log = logging.getLogger(__name__)


class TurnRefused(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Overloaded(Exception):
    """Admission control said no: come back in `retry_after` s. Both APIs map it (HTTP: `status`
    with a Retry-After header; websocket: an error frame with `retry_after`)."""
    status = 503

    def __init__(self, code: str, message: str, retry_after: int):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


class Busy(Overloaded):
    """The server's queue is full (REWARDLOOP_MAX_QUEUE)."""
    status = 503


class UserLimited(Overloaded):
    """This user already has REWARDLOOP_MAX_USER_STREAMS replies generating."""
    status = 429


@dataclass
class ReplyPlan:
    reply_id: str
    user: User
    session_id: str
    turn_index: int
    user_text: str
    prompt: Prompt
    prompt_ids: list[int]
    params: SamplingParams
    adapter_version: str
    api: str = "ws"
    client_msg_id: str | None = None
    candidates: list[str] | None = None
    replaces: str | None = None
    in_history: bool = True
    history_index: int | None = None   # None = append a new turn
    parent_id: str | None = None       # the reply this turn follows ("" = first turn; None = not tracked)
    branch_ids: list[str] | None = None  # the replies before it: the session's history once it is saved
    stop: tuple[str, ...] = ()         # stop strings (OpenAI API); rule in stop_strings.py
    client: dict | None = None         # what an API client said about itself (user, metadata): logged
    handle: object = field(default=None, repr=False)


@dataclass
class ReplyResult:
    plan: ReplyPlan
    text: str
    end: EndEvent


class ChatService:
    def __init__(self, engine: EngineClient, store: ChatStore, tokenizer, settings: ServerSettings, model_id: str,
                 *, watcher=None, metrics=None, safety=None):
        self.engine, self.store, self.tok, self.settings, self.model_id = engine, store, tokenizer, settings, model_id
        self.watcher, self.metrics = watcher, metrics
        self.safety = safety   # a service.serving.quality.ReplySafety: each reply's P[unsafe] in its record
        self.user_streams: dict[str, int] = {}   # user id -> replies generating (event loop only)
        self.scorer = None   # a RewardScorer when REWARDLOOP_RERANK_N > 1
        if settings.rerank_n > 1:
            from service.serving.rerank import RewardScorer
            self.scorer = RewardScorer(engine, settings.data_dir, model_id)

    def rerank_status(self) -> dict:
        """REWARDLOOP_RERANK_N and whether a reward model is in use now (for /admin/adapters)."""
        if self.scorer is None:
            return {"n": 1, "reward_model": None}
        in_use = self.scorer.current() is not None
        return {"n": self.settings.rerank_n,
                "reward_model": "in use" if in_use else self.scorer.refused or "none yet: one candidate per reply"}

    def route(self, session_id: str) -> str:
        return self.watcher.route(session_id) if self.watcher else "base"

    def check_pinned(self, version: str | None) -> str | None:
        """A request may pin a version (debugging, replay); it must be loaded here."""
        if version is None:
            return None
        version = str(version).removeprefix("v") if str(version) != "base" else "base"
        if version == "base" or (self.watcher and self.watcher.servable(version)):
            return version
        loaded = ", ".join(["base"] + (self.watcher.loaded() if self.watcher else []))
        raise TurnRefused("unknown_version", f"adapter version {version!r} is not loaded on this server "
                          f"(loaded: {loaded}); see `rewardloop adapters list`")

    # --- prompt -----------------------------------------------------------------------
    def encode(self, messages: list[dict]) -> list[int]:
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _count(self, messages: list[dict]) -> int:
        return len(self.encode(messages))

    def _budget(self, params: SamplingParams) -> int:
        return self.settings.context_budget - params.max_new_tokens

    def default_params(self, seed: int | None = None, **overrides) -> SamplingParams:
        values = dict(temperature=self.settings.temperature, top_p=self.settings.top_p,
                      max_new_tokens=self.settings.max_new_tokens,
                      seed=secrets.randbits(31) if seed is None else seed)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:  # types, finiteness and ranges first (SamplingParams names the field), then this server's limit
            params = SamplingParams(**values)
        except ValueError as exc:
            raise TurnRefused("bad_value", str(exc)) from None
        if params.max_new_tokens > self.settings.max_new_tokens:
            raise TurnRefused("bad_value", f"max_new_tokens {params.max_new_tokens} exceeds this server's limit "
                              f"{self.settings.max_new_tokens}: ask for at most that many tokens")
        return params

    async def plan_session_turn(self, user: User, session_id: str, user_text: str, *, params: SamplingParams,
                                upto_turn: int | None = None, branch: list[tuple[str, str, str]] | None = None,
                                **extra) -> ReplyPlan:
        """Plan a reply in a websocket session, oldest turns dropped to fit. The history is
        `branch` [(reply_id, user, reply)] when given (the reply gets that branch as its parent
        chain), else the session's current history up to `upto_turn`."""
        if branch is None:
            history = await self.store.history(session_id)
            branch = history if upto_turn is None else history[:upto_turn]
            extra.setdefault("parent_id", branch[-1][0] if branch else "")
        else:
            extra.update(parent_id=branch[-1][0] if branch else "", branch_ids=[rid for rid, _, _ in branch])
        turns = [(u, a) for _, u, a in branch]
        prompt = build_prompt(self.settings.system_prompt, turns, user_text, self._count, self._budget(params))
        return self._plan(user, session_id, len(turns), user_text, prompt, params, **extra)

    def plan_messages(self, user: User, session_id: str, messages: list[dict], params: SamplingParams,
                      **extra) -> ReplyPlan:
        """Plan a reply to an OpenAI-style message list."""
        prompt = fit_messages(messages, self._count, self._budget(params))
        user_text = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        return self._plan(user, session_id, turn, user_text, prompt, params, api="openai", **extra)

    # --- admission ------------------------------------------------------------------
    def check_admission(self, user: User) -> None:
        """Refuse at once (before anything is recorded) when this user or the server is full.
        `start` checks again, atomically with the engine's own bound."""
        self._check_user(user)
        if self.engine.max_queue is not None and self.engine.waiting >= self.engine.max_queue:
            raise self._busy(self.engine.waiting, self.engine.retry_after())

    def _check_user(self, user: User) -> None:
        limit = self.settings.max_user_streams
        if self.user_streams.get(user.user_id, 0) >= limit:
            if self.metrics:
                self.metrics.refused.labels(reason="user_limit").inc()
            raise UserLimited("rate_limited", f"you already have {limit} replies generating: wait for one to end "
                              "(or stop it) before asking for another", 1)

    def _busy(self, waiting: int, retry_after: int) -> Busy:
        if self.metrics:
            self.metrics.refused.labels(reason="busy").inc()
        return Busy("busy", f"the server is busy ({waiting} requests waiting): retry in {retry_after} s",
                    retry_after)

    def _plan(self, user, session_id, turn_index, user_text, prompt: Prompt, params, **extra) -> ReplyPlan:
        self.check_admission(user)
        if prompt.n_tokens > self._budget(params):
            raise TurnRefused("too_long", f"the message alone needs {prompt.n_tokens} tokens but the context "
                              f"budget leaves {self._budget(params)}: send a shorter message")
        version = extra.pop("adapter_version", None) or self.route(session_id)
        return ReplyPlan(new_id("rep"), user, session_id, turn_index, user_text, prompt,
                         self.encode(prompt.messages), params, version, **extra)

    # --- generation -----------------------------------------------------------------
    def start(self, plan: ReplyPlan) -> None:
        """Hand the plan to the engine now (Busy / UserLimited if it cannot take it), so that a
        caller can answer a refusal before it starts a reply (the websocket's reply_start, an
        HTTP status). `stream` starts the plan itself if the caller did not."""
        if plan.handle is not None:
            return
        self._check_user(plan.user)
        adapter = None if is_base(plan.adapter_version) else plan.adapter_version
        try:
            # A websocket session's KV is kept across its turns; an API request is its own session.
            key = (plan.session_id, plan.adapter_version) if plan.api == "ws" else None
            handle = self._submit(GenerationRequest(plan.prompt_ids, plan.params, adapter, cache_key=key))
        except EngineBusy as exc:
            raise self._busy(exc.waiting, exc.retry_after) from None
        uid = plan.user.user_id
        self.user_streams[uid] = self.user_streams.get(uid, 0) + 1
        if self.metrics:
            self.metrics.active_streams.inc()
            self.metrics.load.stream_started(time.time())

        def ended():  # when the engine ends it, whether or not anyone reads the stream
            left = self.user_streams.get(uid, 1) - 1
            if left > 0:
                self.user_streams[uid] = left
            else:
                self.user_streams.pop(uid, None)
            if self.metrics:
                self.metrics.active_streams.dec()
                self.metrics.load.stream_ended(time.time())
        handle.on_end = ended
        plan.handle = handle

    def _submit(self, request: GenerationRequest):
        """One generation, or REWARDLOOP_RERANK_N candidates behind one handle (sampled replies,
        once a reward model for this base model exists)."""
        model = self.scorer.current() if self.scorer and not request.params.greedy else None
        if model is None:
            return self.engine.submit(request)
        from service.serving.rerank import RerankHandle, candidate_requests
        requests, handles = candidate_requests(request, self.settings.rerank_n), []
        try:
            for req in requests:
                handles.append(self.engine.submit(req))
        except EngineBusy:
            for h in handles:
                h.cancel()
            raise
        return RerankHandle(handles, requests, self.scorer, model)

    async def stream(self, plan: ReplyPlan, queued: bool = False) -> AsyncIterator[TokenEvent | TextTail | EndEvent]:
        """Yield token events, then log the reply, then yield the EndEvent; with `queued`,
        QueuedEvents too while the request waits for its prompt to be taken.

        The caller cancels with `plan.handle.cancel()`; the engine then ends the stream
        at its next step and the (cancelled) reply is still logged."""
        self.start(plan)
        async for event in self._events(plan):
            if queued or not isinstance(event, QueuedEvent):
                yield event

    async def _events(self, plan: ReplyPlan) -> AsyncIterator[TokenEvent | TextTail | EndEvent]:
        ids: list[int] = []
        logprobs: list[float] = []
        text = ""
        first_state = None
        scanner = StopScanner(plan.stop) if plan.stop else None
        cut = None   # tokens kept once a stop string ended the reply
        async for event in plan.handle:
            if isinstance(event, QueuedEvent):
                yield event
            elif isinstance(event, TokenEvent):
                if cut is not None:  # sampled after the stop string, before the cancel took effect
                    continue
                if not ids and self.watcher:
                    self.watcher.first_token(plan.adapter_version)
                if not ids and self.metrics:
                    first_state = self.metrics.load.state   # TTFT counts for the learner state of its first token
                if self.metrics:
                    self.metrics.load.token()
                ids.append(event.token_id)
                logprobs.append(event.logprob)
                if scanner:
                    event = dataclasses.replace(event, text=scanner.feed(event.text))
                    if scanner.hit is not None:
                        cut = len(ids)
                        plan.handle.cancel()
                text += event.text
                yield event
            else:
                tail = event.text_tail
                if scanner:
                    tail = scanner.feed(tail) + scanner.flush() if cut is None else ""
                if tail:  # streamed text + tail == the logged text, always
                    yield TextTail(tail)
                text = scanner.text if scanner else self.tok.decode(ids, skip_special_tokens=True)
                if cut is not None:
                    event = dataclasses.replace(event, finish_reason=FinishReason.STOP, n_tokens=cut, text_tail="")
                record = self._record(plan, ids, logprobs, text, event, scanner.hit if scanner else None)
                if self.safety is not None:
                    record = dataclasses.replace(record, quality=await self.safety.quality(plan.user_text, text))
                await self.store.save_reply(record, in_history=plan.in_history, history_index=plan.history_index,
                                            branch=plan.branch_ids)
                if self.safety is not None:   # relevance and fluency follow, off the reply's path
                    self.safety.after_save(plan.user_text, text, record.quality,
                                           lambda q, rid=record.reply_id: self.store.set_quality(rid, q))
                if self.metrics:
                    self.metrics.replies.labels(api=plan.api, finish_reason=event.finish_reason).inc()
                    self.metrics.tokens.inc(event.n_tokens)
                    if event.first_token_at:
                        self.metrics.ttft.observe(event.first_token_at - event.queued_at)
                        self.metrics.load.first_token(event.first_token_at - event.queued_at, first_state)
                yield event

    def _record(self, plan: ReplyPlan, ids, logprobs, text: str, end: EndEvent,
                stop_string: str | None = None) -> ReplyRecord:
        rerank = plan.handle.summary()   # None unless a RerankHandle chose among candidates
        return ReplyRecord(
            reply_id=plan.reply_id, user_id=plan.user.user_id, session_id=plan.session_id,
            turn=plan.turn_index, api=plan.api, client_msg_id=plan.client_msg_id,
            user_text=plan.user_text, prompt_messages=plan.prompt.messages, prompt_ids=plan.prompt_ids,
            history_dropped=plan.prompt.dropped_turns, text=text, token_ids=ids,
            logprobs=[round(x, 6) for x in logprobs],
            params=(plan.handle.params if rerank else plan.params).to_dict(), rerank=rerank,
            adapter_version=plan.adapter_version, model_id=self.model_id,
            queued_at=end.queued_at, first_token_at=end.first_token_at, ended_at=end.ended_at,
            finish_reason=str(end.finish_reason), n_tokens=end.n_tokens, error=end.error,
            prefix_reused=end.prefix_reused, peak_rows=end.peak_rows,   # the path, for replay
            candidates=plan.candidates, replaces=plan.replaces, parent_id=plan.parent_id,
            stop=list(plan.stop) or None, stop_string=stop_string,
            client=plan.client, opt_out=int(plan.user.opt_out), logged_at=time.time(),
        )
