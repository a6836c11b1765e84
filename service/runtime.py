"""Wiring: from a ServerSettings object to the live parts of a server process."""
from __future__ import annotations

import logging
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import redis
import redis.asyncio as aredis

from core.keys import Keys
from core.modeling import LoadedModel, default_stop_ids, load_model
from core.redis_conn import connect, connect_async
from core.registry import Registry
from core.settings import ServerSettings
from service.engine.core import Engine
from service.engine.interface import EngineClient
from service.serving.chat import ChatService
from service.serving.feedback import FeedbackService
from service.serving.metrics import ServerMetrics
from service.serving.store import ChatStore

log = logging.getLogger(__name__)


class RedisUnavailable(RuntimeError):
    pass


def ensure_secret(settings: ServerSettings) -> str:
    """REWARDLOOP_SECRET, or one generated once into DATA_DIR/secret (mode 600)."""
    if settings.secret:
        return settings.secret
    path = Path(settings.data_dir) / "secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def exit_after_draining() -> None:
    """Ask this process to stop as Ctrl-C would: uvicorn finishes the open requests, the
    lifespan shuts down, and `serve` exits non-zero (see Runtime.engine_failure)."""
    signal.raise_signal(signal.SIGTERM)


def check_redis(url: str, timeout: float = 3.0) -> None:
    """Raise RedisUnavailable with a one-line reason naming the URL."""
    try:
        client = connect(url, timeout_s=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        raise RedisUnavailable(f"Redis at {url} does not answer ({exc}); start it, fix REWARDLOOP_REDIS_URL, "
                               "or unset it to use the embedded Redis") from None


@dataclass
class Runtime:
    settings: ServerSettings
    redis_url: str
    secret: str
    keys: Keys
    redis: aredis.Redis | None = None
    loaded: LoadedModel | None = None
    engine: EngineClient | None = None   # the local Engine or a VllmEngine: one interface
    store: ChatStore | None = None
    chat: ChatService | None = None
    feedback: FeedbackService | None = None
    watcher: object = None
    metrics: ServerMetrics | None = None

    engine_failure: str | None = None   # set when the engine thread died: /readyz 503, exit code 1
    on_engine_death: Callable[[], None] = exit_after_draining

    _sync: redis.Redis | None = None
    _registry: Registry | None = None

    def registry(self) -> Registry:
        """The adapter registry over one blocking client, built on first use and kept (admin and
        ops requests share its pool; call from a thread, not the event loop)."""
        if self._registry is None:
            self._sync = connect(self.redis_url, timeout_s=5.0, name=f"rewardloop-admin-{os.getpid()}")
            self._registry = Registry(self._sync, self.keys, self.settings.data_dir)
        return self._registry

    @classmethod
    def create(cls, settings: ServerSettings, redis_url: str) -> Runtime:
        return cls(settings, redis_url, ensure_secret(settings), Keys(settings.prefix))

    def start(self) -> None:
        """Blocking: load the model and start the engine thread (call off the event loop)."""
        self.redis = connect_async(self.redis_url)
        self.store = ChatStore(self.redis, self.keys, self.settings.hot_feedback_id_s)
        self.metrics = ServerMetrics()
        from service.serving.ratelimit import KeyedBuckets
        self.feedback = FeedbackService(self.store, metrics=self.metrics, limiter=KeyedBuckets(
            self.settings.feedback_rate, self.settings.feedback_burst))
        log.info("loading model %s", self.settings.model)
        if self.settings.engine == "vllm":
            return self._start_vllm()
        self.loaded = load_model(self.settings.model, self.settings.models_dir, self.settings.device,
                                 self.settings.dtype)
        self.engine = engine = Engine(self.loaded.model, self.loaded.tokenizer, self.loaded.device,
                                      max_batch=self.settings.max_batch, prefill_chunk=self.settings.prefill_chunk,
                                      on_death=self._engine_died, max_queue=self.settings.max_queue,
                                      prefix_cache_bytes=int(self.settings.prefix_cache_mb * 2 ** 20))
        self.metrics.watch_engine(engine)
        engine.start()
        from service.serving.swap import AdapterWatcher
        self.watcher = AdapterWatcher(self.redis, self.keys, engine, self.loaded.model_id,
                                      Path(self.settings.data_dir) / "adapters", max_resident=self.settings.max_resident,
                                      metrics=self.metrics, slots=self.settings.adapter_slots)
        self.chat = ChatService(engine, self.store, self.loaded.tokenizer, self.settings, self.loaded.model_id,
                                watcher=self.watcher, metrics=self.metrics, safety=self._safety(self._engine_scores))
        log.info("model %s ready on %s", self.loaded.model_id, self.loaded.device)

    def _start_vllm(self) -> None:
        """REWARDLOOP_ENGINE=vllm: the tokenizer and the model's shape here, generation on the vLLM servers."""
        from service.engine.vllm import VllmEngine, load_tokenizer_and_shape
        from service.serving.swap import AdapterWatcher
        from service.serving.swap_backends import VllmAdapters
        if not self.settings.vllm_url_list:
            raise RuntimeError("REWARDLOOP_ENGINE=vllm needs REWARDLOOP_VLLM_URLS (the vLLM servers' base URLs), "
                               "or start one with `rewardloop up --engine vllm`")
        self.loaded = load_tokenizer_and_shape(self.settings.model, self.settings.models_dir)
        tok = self.loaded.tokenizer
        self.engine = engine = VllmEngine(self.settings.vllm_url_list, tok, self.loaded.model.config.vocab_size,
                                          default_stop_ids(tok), max_queue=self.settings.max_queue,
                                          timeout_s=self.settings.vllm_timeout_s)
        engine.wait_ready(self.settings.vllm_wait_s)
        self.metrics.watch_engine(engine)
        modules = {n for n, _ in self.loaded.model.named_modules()}
        self.watcher = AdapterWatcher(self.redis, self.keys, engine, self.loaded.model_id,
                                      Path(self.settings.data_dir) / "adapters", max_resident=self.settings.max_resident,
                                      metrics=self.metrics, backend=VllmAdapters(engine, modules))
        self.chat = ChatService(engine, self.store, tok, self.settings, self.loaded.model_id,
                                watcher=self.watcher, metrics=self.metrics,
                                safety=self._safety(absent="relevance and fluency: not scored on the vLLM engine"))
        log.info("model %s ready on vLLM: %s", self.loaded.model_id, ", ".join(self.settings.vllm_url_list))

    def _engine_scores(self):
        """Relevance and fluency on the local engine's thread (REWARDLOOP_REPLY_QUALITY), calibrating first."""
        if not self.settings.reply_quality:
            return None
        from service.serving.quality import EngineScores
        scores = EngineScores(self.engine, self.loaded.tokenizer, self.loaded.model_id, Path(self.settings.models_dir))
        scores.start()
        return scores

    def _safety(self, base_scores=None, absent: str | None = None):
        """The scorer every reply passes: P[unsafe] (REWARDLOOP_SAFETY_MODEL; the offline default)
        and, with `base_scores` (a factory), relevance and fluency under the base model."""
        from service.serving.quality import NOT_SCORED_HERE, ReplySafety
        if not self.settings.reply_safety:
            log.warning("REWARDLOOP_REPLY_SAFETY=0: replies are not scored (the veto sees only safety words and "
                        "users' reports; no relevance or fluency)")
            return None
        safety = ReplySafety.load(self.settings.safety_model, absent=absent or NOT_SCORED_HERE)
        safety.base = base_scores() if base_scores is not None else None   # after the scorer loaded: it may raise
        log.info("replies are scored for safety by %s%s", safety.scorer.name,
                 "" if safety.base is None else ", relevance and fluency under the base model on the engine thread")
        return safety

    async def stop(self) -> None:
        if self.engine:
            self.engine.shutdown()
            await self.engine.aclose()   # the vllm engine's HTTP client
        if self.redis:
            await self.redis.aclose()

    def _engine_died(self, why: str) -> None:
        """Engine thread, as it ends: nothing can generate in this process any more. Readiness
        turns false at once (load balancers stop sending), then the process drains and exits
        non-zero so that its supervisor starts a fresh one."""
        self.engine_failure = why
        log.critical("the engine thread died (%s): not ready; draining and exiting", why)
        self.on_engine_death()

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.alive
