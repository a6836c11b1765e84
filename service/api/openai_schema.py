"""Request and response bodies of the OpenAI-compatible API, as pydantic models: they are
what /docs and /openapi.json show, and they validate type and range of every field.

A field of OpenAI's API that this server does not implement is declared (so the schema
says so) and refused by name when it is set to anything but its no-op value: a client
is told, rather than silently served something else. A field OpenAI does not have is an
`extra_forbidden` error, also named (see service/app.py's validation handler).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator

MAX_N = 4            # candidates per request (each a logged reply)
MAX_STOP = 4         # stop strings, as OpenAI
MAX_STOP_CHARS = 256
MAX_TOP_LOGPROBS = 20
SEED_MIN, SEED_MAX = -(2 ** 63), 2 ** 64 - 1   # what torch.Generator.manual_seed accepts
MAX_ID_CHARS = 256


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _unset(value) -> bool:
    return value is None


# field -> (is it a no-op value?, why it is refused). Checked on what the client sent.
REFUSED_CHAT: dict[str, tuple[Any, str]] = {
    "tools": (lambda v: not v, "tool calling is not implemented by this server"),
    "tool_choice": (lambda v: v in (None, "none"), "tool calling is not implemented by this server"),
    "parallel_tool_calls": (_unset, "tool calling is not implemented by this server"),
    "functions": (lambda v: not v, "function calling is not implemented by this server"),
    "function_call": (lambda v: v in (None, "none"), "function calling is not implemented by this server"),
    "response_format": (lambda v: v is None or v == {"type": "text"},
                        "only plain text replies are produced (response_format {\"type\": \"text\"})"),
    "logit_bias": (lambda v: not v, "logit_bias is not implemented: the logged behavior log-probs would not match"),
    "presence_penalty": (lambda v: not v, "penalties are not implemented (send 0 or leave it out)"),
    "frequency_penalty": (lambda v: not v, "penalties are not implemented (send 0 or leave it out)"),
    "audio": (_unset, "audio output is not implemented"),
    "modalities": (lambda v: v is None or list(v) == ["text"], "only the text modality is produced"),
    "prediction": (_unset, "predicted outputs are not implemented"),
    "web_search_options": (_unset, "web search is not implemented"),
    "reasoning_effort": (_unset, "this model does not reason in separate tokens"),
    "verbosity": (_unset, "verbosity is not implemented"),
    "service_tier": (lambda v: v in (None, "auto", "default"), "there is one service tier (auto/default)"),
    "store": (lambda v: v is None or v is True,
              "every reply is stored (it is how this service learns): store=false cannot be honoured"),
    "prompt_cache_key": (_unset, "prompt caching hints are not implemented"),
    "prompt_cache_retention": (_unset, "prompt caching hints are not implemented"),
    "prompt_cache_options": (_unset, "prompt caching hints are not implemented"),
    "moderation": (_unset, "moderation is not implemented"),
}
REFUSED_COMPLETION: dict[str, tuple[Any, str]] = {
    "suffix": (lambda v: not v, "insertion (suffix) is not implemented"),
    "echo": (lambda v: not v, "echo is not implemented"),
    "best_of": (lambda v: v in (None, 1), "best_of is not implemented (use n: every candidate is returned)"),
    "logit_bias": REFUSED_CHAT["logit_bias"],
    "presence_penalty": REFUSED_CHAT["presence_penalty"],
    "frequency_penalty": REFUSED_CHAT["frequency_penalty"],
}


def refused_field(body: BaseModel, table: dict[str, tuple[Any, str]]) -> tuple[str, str] | None:
    """(field, why) of the first unimplemented field the client set to a real value."""
    for name in sorted(body.model_fields_set & table.keys()):
        is_noop, why = table[name]
        if not is_noop(getattr(body, name)):
            return name, why
    return None


# --- requests ------------------------------------------------------------------------------
class TextPart(Strict):
    type: Literal["text"]
    text: str


class ContentPart(BaseModel):
    """Any content part: only `text` parts are accepted (checked in openai_api with the index)."""
    model_config = ConfigDict(extra="allow")
    type: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"] = Field(
        description="system and developer are both the system message; tool/function messages are refused "
                    "(no tool calling)")
    content: str | list[ContentPart] | None = Field(
        None, description="a string, or text parts (joined); image/audio/file parts are refused")
    name: str | None = Field(None, description="refused when set: the chat template has no participant names")
    tool_calls: list[Any] | None = Field(None, description="refused when non-empty (no tool calling)")
    tool_call_id: str | None = Field(None, description="refused when set (no tool calling)")
    function_call: Any | None = Field(None, description="refused when set (no function calling)")
    refusal: str | None = Field(None, description="accepted and ignored when null (as the client echoes it)")
    audio: Any | None = Field(None, description="refused when set")
    annotations: list[Any] | None = Field(None, description="accepted and ignored (as the client echoes them)")


class StreamOptions(Strict):
    include_usage: StrictBool | None = Field(None, description="a last chunk with `choices: []` and `usage`")
    include_obfuscation: StrictBool | None = Field(None, description="accepted; chunks are never padded")


Stop = str | Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]],
                       Field(max_length=MAX_STOP)] | None


class SamplingFields(Strict):
    """What chat and text completions share."""
    model: str = Field(max_length=MAX_ID_CHARS, description="the base model id, `<model>@<version>` (pin an "
                       "adapter version, or `@base`), or an alias (`rewardloop`, the REWARDLOOP_MODEL name); "
                       "see GET /v1/models. Unknown ids get 404 model_not_found")
    temperature: StrictFloat | None = Field(None, ge=0, le=2, allow_inf_nan=False, description="0 = greedy")
    top_p: StrictFloat | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    n: StrictInt | None = Field(None, ge=1, le=MAX_N, description="candidates, each a logged reply with its own "
                                "`reply_id`; feedback (choose included) works on each")
    stream: StrictBool | None = Field(None, description="server-sent events, ending with `data: [DONE]`")
    stream_options: StreamOptions | None = None
    stop: Stop = Field(None, description=f"up to {MAX_STOP} strings; the reply ends before the first one found "
                       "(finish_reason stop) and the logged reply is the text the client received")
    max_tokens: StrictInt | None = Field(None, ge=1, description="at most the server's REWARDLOOP_MAX_NEW_TOKENS")
    seed: StrictInt | None = Field(None, ge=SEED_MIN, le=SEED_MAX, description="candidate i samples with seed+i; "
                                   "same seed, same parameters, same version -> the same reply")
    user: str | None = Field(None, max_length=MAX_ID_CHARS, description="your end-user's id: logged with the "
                             "reply (as `client_user`); the bearer token still decides who the reply belongs to")
    presence_penalty: StrictFloat | None = Field(None, ge=-2, le=2, allow_inf_nan=False, description="refused unless 0")
    frequency_penalty: StrictFloat | None = Field(None, ge=-2, le=2, allow_inf_nan=False, description="refused unless 0")
    logit_bias: dict[str, StrictFloat] | None = Field(None, description="refused unless empty")
    adapter_version: str | None = Field(None, max_length=MAX_ID_CHARS,
                                        description="rewardloop: pin an adapter version (same as `model@version`)")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if isinstance(v, str) and not (0 < len(v) <= MAX_STOP_CHARS):
            raise ValueError(f"a stop string must have 1..{MAX_STOP_CHARS} characters")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, description="the conversation; the last message is the "
                                        "user's. Oldest non-system messages are dropped to fit the context budget")
    max_completion_tokens: StrictInt | None = Field(None, ge=1, description="preferred over max_tokens")
    logprobs: StrictBool | None = Field(None, description="each sampled token's behavior log-prob: the log-prob "
                                        "under the distribution it was drawn from (after temperature and top-p), "
                                        "exactly what the log stores for learning")
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                           description="only 0 is served (no alternatives are kept)")
    # OpenAI fields this server does not implement: refused unless unset / a no-op value.
    tools: list[Any] | None = None
    tool_choice: Any | None = None
    parallel_tool_calls: Any | None = None
    functions: list[Any] | None = None
    function_call: Any | None = None
    response_format: dict[str, Any] | None = Field(None, description='only {"type": "text"}')
    audio: Any | None = None
    modalities: list[str] | None = Field(None, description='only ["text"]')
    prediction: Any | None = None
    web_search_options: Any | None = None
    reasoning_effort: Any | None = None
    verbosity: Any | None = None
    service_tier: Any | None = Field(None, description="auto or default")
    store: Any | None = Field(None, description="replies are always stored: only true")
    metadata: dict[str, str] | None = Field(None, description="up to 16 string pairs, logged with the reply")
    safety_identifier: str | None = Field(None, max_length=MAX_ID_CHARS, description="logged like `user`")
    prompt_cache_key: Any | None = None
    prompt_cache_retention: Any | None = None
    prompt_cache_options: Any | None = None
    moderation: Any | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v):
        if v is not None and (len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())):
            raise ValueError("metadata holds at most 16 pairs, keys up to 64 and values up to 512 characters")
        return v


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[StrictInt], Field(min_length=1)] | list[str] | list[list[StrictInt]] = Field(
        description="a text (sent as is, no chat template) or token ids (replay a logged `prompt_ids`); one "
                    "prompt per request (a list of prompts is refused)")
    logprobs: StrictInt | None = Field(None, ge=0, le=5, description="0: each sampled token's behavior log-prob; "
                                       "more (alternatives) is refused")
    echo: StrictBool | None = None
    suffix: str | None = None
    best_of: StrictInt | None = Field(None, ge=1, le=MAX_N)


# --- responses -----------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TokenLogprob(BaseModel):
    token: str = Field(description="the token as the tokenizer spells it")
    logprob: float = Field(description="behavior log-prob (after temperature and top-p); 0.0 when greedy")
    bytes: list[int] | None
    top_logprobs: list[Any] = Field(default_factory=list, description="always empty")


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None
    reply_id: str = Field(description="rewardloop: this candidate's reply id (send feedback on it)")


class RewardloopInfo(BaseModel):
    session_id: str
    adapter_version: str
    reply_ids: list[str]


class ChatCompletion(BaseModel):
    id: str = Field(description="the first candidate's reply id")
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="<model id>@<adapter version that wrote the reply>")
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    rewardloop: RewardloopInfo


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[Any] | None = None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: CompletionLogprobs | None = None
    reply_id: str


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None
    rewardloop: RewardloopInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rewardloop"
    root: str = Field(description="the base model id")
    parent: str | None = Field(description="the model id this version was trained from (None for the base model)")
    rewardloop: dict[str, Any] = Field(description="version, role (routed | stable | canary | rollback_target | "
                                       "resident), state, samples")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 413, 429, 500, 503)}
