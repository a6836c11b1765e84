"""The OpenAI-compatible API: /v1/models, /v1/chat/completions and /v1/completions (plain
and SSE). Bodies are the pydantic models of openai_schema (what /docs shows); a field the
server does not implement is refused by name (400, `param`), never silently ignored."""
from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from core.sampling import SamplingParams
from service.api import openai_models, openai_stream
from service.api.common import ApiError, bearer_user, require_ready
from service.api.openai_schema import (
    ERRORS,
    REFUSED_CHAT,
    REFUSED_COMPLETION,
    SEED_MAX,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ModelCard,
    ModelList,
    SamplingFields,
    TextCompletion,
    refused_field,
)
from service.serving.auth import User
from service.serving.chat import ReplyPlan, TurnRefused
from service.serving.prompting import Prompt
from service.serving.store import new_id

router = APIRouter(tags=["OpenAI-compatible"])
SSE_DOC = {"description": "with stream=true: text/event-stream of chunks, an `event: error` if generation "
           "fails mid-stream, then `data: [DONE]`", "content": {"text/event-stream": {}}}


def ready_user(request: Request) -> User:
    """Authenticated first (401), then ready (503)."""
    user = bearer_user(request)
    require_ready(request)
    return user


ReadyUser = Annotated[User, Depends(ready_user)]


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(request: Request, user: ReadyUser):
    return await openai_models.listing(request.app.state.runtime)


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERRORS)
async def get_model(model_id: str, request: Request, user: ReadyUser):
    return await openai_models.card_for(request.app.state.runtime, model_id)


# --- request -> plans ---------------------------------------------------------------------------
def _refuse_unimplemented(body, table) -> None:
    if (hit := refused_field(body, table)) is not None:
        name, why = hit
        raise ApiError(400, "unsupported_parameter", f"{name} is not supported: {why}", name)


def _messages(msgs: list[ChatMessage]) -> list[dict]:
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if m.role in ("tool", "function"):
            raise ApiError(400, "unsupported_parameter", f"{where}: {m.role} messages need tool calling, which this "
                           "server does not implement", f"{where}.role")
        for name in ("name", "tool_call_id", "function_call", "audio"):
            if getattr(m, name) is not None:
                raise ApiError(400, "unsupported_parameter", f"{where}.{name} is not supported by this server's chat "
                               "template: leave it out", f"{where}.{name}")
        if m.tool_calls:
            raise ApiError(400, "unsupported_parameter", f"{where}.tool_calls: tool calling is not implemented",
                           f"{where}.tool_calls")
        if m.content is None:
            if m.role != "assistant":
                raise ApiError(400, "missing_field", f"{where}.content is required for a {m.role} message",
                               f"{where}.content")
            content = ""
        elif isinstance(m.content, str):
            content = m.content
        else:
            parts = []
            for j, part in enumerate(m.content):
                text = (part.model_extra or {}).get("text")
                if part.type != "text" or not isinstance(text, str):
                    raise ApiError(400, "unsupported_parameter", f"{where}.content[{j}]: only text parts "
                                   f"({{type: text, text: str}}) are accepted, got type {part.type!r}",
                                   f"{where}.content[{j}].type")
                parts.append(text)
            content = "".join(parts)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    if out[-1]["role"] != "user":
        raise ApiError(400, "bad_value", "the last message must have role 'user'", "messages")
    return out


def _param_in(message: str, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in message), None)


def _params(runtime, body: SamplingFields, max_tokens: int | None, i: int) -> SamplingParams:
    seed = body.seed
    if seed is not None:   # candidates differ by seed: candidate i samples with seed + i
        seed = seed + i if seed + i <= SEED_MAX else seed - i
    try:
        return runtime.chat.default_params(seed=seed, temperature=body.temperature, top_p=body.top_p,
                                           max_new_tokens=max_tokens)
    except TurnRefused as err:
        name = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        param = _param_in(err.message, ("max_tokens", "max_new_tokens", "temperature", "top_p", "seed"))
        raise ApiError(400, err.code, err.message, name if param in ("max_tokens", "max_new_tokens") else param) \
            from None


def _client(body: SamplingFields) -> dict | None:
    info = {k: getattr(body, k, None) for k in ("user", "safety_identifier", "metadata")}
    return {k: v for k, v in info.items() if v is not None} or None


def _link(plans: list[ReplyPlan]) -> list[ReplyPlan]:
    """n > 1: the replies are candidates of one turn (feedback `choose` between them); the
    first is the session's answer until one is chosen. An API request is its own session,
    so its turn is 0 (the index `choose` rewrites)."""
    ids = [p.reply_id for p in plans]
    for i, p in enumerate(plans):
        p.turn_index, p.in_history = 0, i == 0
        if len(plans) > 1:
            p.candidates = ids
    return plans


async def _chat_plans(runtime, user: User, body: ChatCompletionRequest) -> list[ReplyPlan]:
    _refuse_unimplemented(body, REFUSED_CHAT)
    if body.top_logprobs:
        raise ApiError(400, "unsupported_parameter", "top_logprobs > 0 is not supported: the engine keeps only the "
                       "sampled token's log-prob (send logprobs=true, top_logprobs 0 or leave it out)", "top_logprobs")
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "bad_value", "top_logprobs needs logprobs=true", "top_logprobs")
    messages = _messages(body.messages)
    pinned = openai_models.resolve(runtime, body.model, body.adapter_version)
    max_tokens = body.max_completion_tokens or body.max_tokens
    params = [_params(runtime, body, max_tokens, i) for i in range(body.n or 1)]
    session_id = (await runtime.store.create_session(user.user_id)).session_id
    try:
        plans = [runtime.chat.plan_messages(user, session_id, messages, p, adapter_version=pinned,
                                            stop=tuple(body.stop_list()), client=_client(body)) for p in params]
    except TurnRefused as err:
        raise ApiError(400, err.code, err.message, "messages") from None
    return _link(plans)


def _prompt_ids(runtime, prompt) -> tuple[list[int], str]:
    tok = runtime.loaded.tokenizer
    if isinstance(prompt, str):
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ApiError(400, "bad_value", "prompt is empty", "prompt")
        return ids, prompt
    if not prompt:
        raise ApiError(400, "bad_value", "prompt is empty", "prompt")
    if not isinstance(prompt[0], int):
        raise ApiError(400, "unsupported_parameter", "one prompt per request (a text or a list of token ids): send "
                       "a list of prompts as separate requests", "prompt")
    vocab = runtime.loaded.model.config.vocab_size
    bad = next((t for t in prompt if not 0 <= t < vocab), None)
    if bad is not None:
        raise ApiError(400, "bad_value", f"token id {bad} is outside the vocabulary (0..{vocab - 1})", "prompt")
    return list(prompt), tok.decode(prompt, skip_special_tokens=False)


async def _completion_plans(runtime, user: User, body: CompletionRequest) -> list[ReplyPlan]:
    _refuse_unimplemented(body, REFUSED_COMPLETION)
    if body.logprobs:
        raise ApiError(400, "unsupported_parameter", "logprobs > 0 (alternatives per token) is not supported: send "
                       "logprobs=0 for each sampled token's behavior log-prob", "logprobs")
    ids, text = _prompt_ids(runtime, body.prompt)
    pinned = openai_models.resolve(runtime, body.model, body.adapter_version)
    params = [_params(runtime, body, body.max_tokens, i) for i in range(body.n or 1)]
    budget = runtime.settings.context_budget - params[0].max_new_tokens
    if len(ids) > budget:
        raise ApiError(400, "too_long", f"the prompt has {len(ids)} tokens but the context budget leaves {budget} "
                       "(REWARDLOOP_CONTEXT_BUDGET minus max_tokens): send a shorter prompt", "prompt")
    session_id = (await runtime.store.create_session(user.user_id)).session_id
    version = pinned or runtime.chat.route(session_id)
    # A raw prompt: no chat template, no system prompt; the ids are what the engine sees.
    return _link([ReplyPlan(new_id("rep"), user, session_id, 0, text, Prompt([], len(ids), 0), ids, p, version,
                            api="openai_completion", stop=tuple(body.stop_list()), client=_client(body))
                  for p in params])


# --- routes -------------------------------------------------------------------------------------
async def _respond(runtime, body: SamplingFields, plans: list[ReplyPlan], shape):
    model = f"{runtime.loaded.model_id}@{plans[0].adapter_version}"
    openai_stream.start_all(runtime.chat, plans)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(openai_stream.sse(runtime.chat, shape, model, plans, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-store"})
    cands = await openai_stream.run_all(runtime.chat, plans)
    return openai_stream.body(shape, model, plans, cands, int(time.time()))


def _check_stream_options(body) -> None:
    if body.stream_options is not None and not body.stream:
        raise ApiError(400, "bad_value", "stream_options needs stream=true", "stream_options")


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={**ERRORS, 200: SSE_DOC})
async def chat_completions(body: ChatCompletionRequest, request: Request, user: ReadyUser):
    runtime = request.app.state.runtime
    _check_stream_options(body)
    plans = await _chat_plans(runtime, user, body)
    return await _respond(runtime, body, plans, openai_stream.ChatShape(runtime.loaded.tokenizer, bool(body.logprobs)))


@router.post("/v1/completions", response_model=TextCompletion, responses={**ERRORS, 200: SSE_DOC})
async def completions(body: CompletionRequest, request: Request, user: ReadyUser):
    runtime = request.app.state.runtime
    _check_stream_options(body)
    plans = await _completion_plans(runtime, user, body)
    shape = openai_stream.CompletionShape(runtime.loaded.tokenizer, body.logprobs is not None)
    return await _respond(runtime, body, plans, shape)
