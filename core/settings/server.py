"""`rewardloop serve`'s settings: the HTTP/websocket server, generation, the engine, admission."""
from __future__ import annotations

from dataclasses import dataclass

from core.config_fields import ConfigError, setting
from core.settings.common import CommonSettings


@dataclass(frozen=True)
class ServerSettings(CommonSettings):
    """`rewardloop serve`: the HTTP/websocket server and its engine."""
    host: str = setting("127.0.0.1", "REWARDLOOP_HOST: address the HTTP server binds.")
    dtype: str = setting(
        "auto", "REWARDLOOP_DTYPE: weights of the built-in engine: 'auto' (bfloat16 on CUDA, float32 on a CPU), 'float32' "
        "or 'bfloat16'. bf16 on a CPU with AVX-512 decodes 16 streams ~1.6x faster, but its replies scored lower "
        "on the learning bench (bench/cpu_dtype.py); the learner recomputes log-probs in float32.",
        choices=("auto", "float32", "bfloat16"))
    port: int = setting(8000, "REWARDLOOP_PORT: port the HTTP server binds.", ge=1, le=65535)
    secret: str | None = setting(
        None, "REWARDLOOP_SECRET: signs user tokens. Unset: generated once into DATA_DIR/secret.")
    admin_token: str | None = setting(None, "REWARDLOOP_ADMIN_TOKEN: operator token for admin endpoints and /ops.")
    token_ttl_s: int = setting(30 * 24 * 3600, "REWARDLOOP_TOKEN_TTL_S: lifetime of a user token in seconds.")
    max_new_tokens: int = setting(256, "REWARDLOOP_MAX_NEW_TOKENS: most tokens one reply may generate.", ge=1)
    temperature: float = setting(0.7, "REWARDLOOP_TEMPERATURE: sampling temperature; 0 means greedy.", ge=0)
    top_p: float = setting(0.9, "REWARDLOOP_TOP_P: nucleus sampling mass, in (0, 1].", gt=0, le=1)
    context_budget: int = setting(
        2048, "REWARDLOOP_CONTEXT_BUDGET: prompt + reply tokens allowed; older turns are dropped to fit.")
    max_message_bytes: int = setting(
        8192, "REWARDLOOP_MAX_MESSAGE_BYTES: largest websocket frame or message accepted.")
    system_prompt: str = setting(
        "You are a helpful assistant. Answer briefly and clearly.", "REWARDLOOP_SYSTEM_PROMPT: system message of every conversation ('' for none).",
        )
    feedback_rate: float = setting(
        20.0, "REWARDLOOP_FEEDBACK_RATE: feedback events per second one user may send (websocket and POST /v1/feedback "
        "together, per server process).", gt=0)
    feedback_burst: int = setting(50, "REWARDLOOP_FEEDBACK_BURST: feedback events one user may send at once.", ge=1)
    reply_safety: bool = setting(
        True, "REWARDLOOP_REPLY_SAFETY: 1 (default) scores every reply's P[unsafe] as it ends (REWARDLOOP_SAFETY_MODEL) "
        "so the reward's veto sees it; 0 only for a model whose text means nothing (the tests' tiny random model, "
        "whose word salad the default scorer sometimes reads as unsafe).")
    reply_quality: bool = setting(
        True, "REWARDLOOP_REPLY_QUALITY: 1 (default) also scores every reply's relevance and fluency under the base "
        "model, on the local engine's thread as the reply ends (a forward pass over the prompt and reply; the vLLM "
        "engine does not score them); 0 leaves the reward without those two components.")
    anonymous: bool = setting(
        True, "REWARDLOOP_ANONYMOUS: 1 lets POST /api/session hand out anonymous user tokens; 0 turns it off for "
        "deployments with their own login (tokens from `rewardloop token create`).")
    anonymous_per_minute: int = setting(
        20, "REWARDLOOP_ANONYMOUS_PER_MINUTE: anonymous tokens one client address may get per minute (per server "
        "process).", ge=1, le=100_000)
    candidate_share: float = setting(
        0.0, "REWARDLOOP_CANDIDATE_SHARE: share of turns answered with two candidates to choose from (0..1).",
        ge=0, le=1)
    max_resident: int = setting(3, "REWARDLOOP_MAX_RESIDENT: most adapter versions loaded in one server.")
    adapter_slots: int = setting(
        8, "REWARDLOOP_ADAPTER_SLOTS: LoRA slots kept built in one server (resident versions, older ones still "
        "streaming, spares). A new version copied into a free slot swaps in milliseconds; building a slot stalls "
        "decoding ~0.5 s. Each slot holds one adapter's weights in memory.")
    max_batch: int = setting(
        32, "REWARDLOOP_MAX_BATCH: most streams fed back in one batched decode step (1 = one forward pass per "
        "stream).", ge=1)
    prefill_chunk: int = setting(
        128, "REWARDLOOP_PREFILL_CHUNK: prompt tokens fed in one forward pass (the last pass takes up to a quarter "
        "chunk more rather than a pass of its own). Other streams and adapter swaps wait for that pass: 128 "
        "tokens is ~0.4 s at a 2k context on 2 CPU cores; 256 prefills ~10 % faster but stalls twice as long.", ge=1)
    max_queue: int = setting(
        64, "REWARDLOOP_MAX_QUEUE: most requests waiting for their first token (queued or being prefilled) in one "
        "server. Past it a request is refused at once: websocket `error {code: busy, retry_after}`, HTTP 503 with "
        "Retry-After.", ge=1)
    max_user_streams: int = setting(
        4, "REWARDLOOP_MAX_USER_STREAMS: most replies one user may have generating at once, over all connections and "
        "APIs; past it: websocket `error {code: rate_limited}`, HTTP 429.", ge=1)
    prefix_cache_mb: float = setting(
        512.0, "REWARDLOOP_PREFIX_CACHE_MB: memory (MiB) for sessions' KV caches kept between turns (least recently used "
        "dropped first), so the next turn prefills only what is new. 0 turns the prefix cache off.", ge=0)
    rerank_n: int = setting(
        1, "REWARDLOOP_RERANK_N: sample this many candidates of each sampled chat reply and stream the one the "
        "learned reward model (DATA_DIR/reward_model, trained by the learner) scores highest. 1 (default) is off. "
        "The first token then waits for all N candidates and one scoring pass; without a reward model for this "
        "base model the server samples one. Built-in engine only.", ge=1, le=16)
    engine: str = setting(
        "local", "REWARDLOOP_ENGINE: 'local' (default: the built-in torch engine in this process) or 'vllm' (generate on "
        "the vLLM OpenAI servers of REWARDLOOP_VLLM_URLS; `rewardloop up --engine vllm` starts one).",
        choices=("local", "vllm"))
    vllm_urls: str = setting(
        "", "REWARDLOOP_VLLM_URLS: comma-separated base URLs of the vLLM OpenAI servers this server uses with "
        "REWARDLOOP_ENGINE=vllm (e.g. http://gpu1:8100,http://gpu2:8100); requests spread over them, a dead one "
        "is skipped. They must serve REWARDLOOP_MODEL with --enable-lora --logprobs-mode processed_logprobs and "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and see DATA_DIR/adapters at the same path.")
    vllm_timeout_s: float = setting(
        120.0, "REWARDLOOP_VLLM_TIMEOUT_S: longest wait for the next chunk of a vLLM stream before the server counts as "
        "failed (that reply ends with an error).", gt=0)
    vllm_wait_s: float = setting(
        600.0, "REWARDLOOP_VLLM_WAIT_S: at start, how long to wait for a vLLM server to answer before giving up.",
        gt=0)
    vllm_python: str = setting(
        "", "REWARDLOOP_VLLM_PYTHON: the Python with vLLM installed that `rewardloop up --engine vllm` runs (default: "
        ".venv-vllm/bin/python where `make vllm-deps` made it, else this Python).")
    vllm_port: int = setting(
        8100, "REWARDLOOP_VLLM_PORT: port of the vLLM server `rewardloop up --engine vllm` starts.", ge=1, le=65535)
    vllm_max_lora_rank: int = setting(
        64, "REWARDLOOP_VLLM_MAX_LORA_RANK: --max-lora-rank of the vLLM server `up` starts: the largest LoRA rank it "
        "can load (vLLM accepts 1, 8, 16, 32, 64, 128, 256, ...).", ge=1, le=512)

    def _check(self) -> None:
        if self.context_budget <= self.max_new_tokens:
            raise ConfigError(f"context_budget ({self.context_budget}) must exceed max_new_tokens "
                              f"({self.max_new_tokens}): REWARDLOOP_CONTEXT_BUDGET")
        if self.adapter_slots < self.max_resident:
            raise ConfigError(f"adapter_slots ({self.adapter_slots}) must be >= max_resident ({self.max_resident}) "
                              "(REWARDLOOP_ADAPTER_SLOTS, REWARDLOOP_MAX_RESIDENT)")
        if self.rerank_n > 1 and self.engine != "local":
            raise ConfigError(f"rerank_n={self.rerank_n} needs the built-in engine: the reward model reads the "
                              "base model's hidden states in this process. Set REWARDLOOP_RERANK_N=1 or "
                              "REWARDLOOP_ENGINE=local")
        for url in self.vllm_url_list:
            if not url.startswith(("http://", "https://")) or len(url) < 10:
                raise ConfigError(f"vllm_urls must be comma-separated http(s):// URLs, got {url!r} "
                                  "(REWARDLOOP_VLLM_URLS)")

    @property
    def vllm_url_list(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.vllm_urls.split(",") if u.strip()]
