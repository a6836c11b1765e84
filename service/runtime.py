"""Wiring: from a Settings object to the live parts of a server process."""
from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import redis
import redis.asyncio as aredis

from learner.modeling import LoadedModel, load_model

from .chat import ChatService
from .engine import Engine
from .feedback import FeedbackService
from .keys import Keys
from .metrics import ServerMetrics
from .settings import Settings
from .store import ChatStore

log = logging.getLogger(__name__)


class RedisUnavailable(RuntimeError):
    pass


def ensure_secret(settings: Settings) -> str:
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


def check_redis(url: str, timeout: float = 3.0) -> None:
    """Raise RedisUnavailable with a one-line reason naming the URL."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
    except redis.RedisError as exc:
        raise RedisUnavailable(f"Redis at {url} does not answer ({exc}); start it, fix REWARDLOOP_REDIS_URL, "
                               "or unset it to use the embedded Redis") from None


@dataclass
class Runtime:
    settings: Settings
    redis_url: str
    secret: str
    keys: Keys
    redis: aredis.Redis | None = None
    loaded: LoadedModel | None = None
    engine: Engine | None = None
    store: ChatStore | None = None
    chat: ChatService | None = None
    feedback: FeedbackService | None = None
    watcher: object = None
    metrics: ServerMetrics | None = None

    @classmethod
    def create(cls, settings: Settings, redis_url: str) -> "Runtime":
        return cls(settings, redis_url, ensure_secret(settings), Keys(settings.prefix))

    def start(self) -> None:
        """Blocking: load the model and start the engine thread (call off the event loop)."""
        self.redis = aredis.Redis.from_url(self.redis_url, health_check_interval=10)
        self.store = ChatStore(self.redis, self.keys)
        self.feedback = FeedbackService(self.store)
        log.info("loading model %s", self.settings.model)
        self.loaded = load_model(self.settings.model, self.settings.models_dir, self.settings.device)
        self.engine = Engine(self.loaded.model, self.loaded.tokenizer, self.loaded.device,
                             max_batch=self.settings.max_batch, prefill_chunk=self.settings.prefill_chunk)
        self.engine.start()
        from .swap import AdapterWatcher
        self.metrics = ServerMetrics()
        self.watcher = AdapterWatcher(self.redis, self.keys, self.engine, self.loaded.model_id,
                                      Path(self.settings.data_dir) / "adapters", self.settings.max_resident,
                                      metrics=self.metrics, slots=self.settings.adapter_slots)
        self.chat = ChatService(self.engine, self.store, self.loaded.tokenizer, self.settings, self.loaded.model_id,
                                watcher=self.watcher, metrics=self.metrics)
        log.info("model %s ready on %s", self.loaded.model_id, self.loaded.device)

    async def stop(self) -> None:
        if self.engine:
            self.engine.shutdown()
        if self.redis:
            await self.redis.aclose()

    @property
    def ready(self) -> bool:
        return self.engine is not None
