"""Hot swap: keep this server's resident adapter versions and routing in line with the
registry (`{prefix}adapters`), without touching a stream in flight. Engine-agnostic: the
versions live in a backend (swap_backends.py: the local engine's LoRA slots, or LoRAs loaded
on every vLLM server); the swap records (`{prefix}adapters:swaps`) and metrics are the same.

Triggers: a notice on `{prefix}adapters:changed`, and a periodic re-read, so a missed
message or a restart still converges. Validation runs in a worker thread; loading and
unloading run on the engine thread between decode steps. A stream keeps the version it
started with (the engine holds a reference count per version until the stream ends).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import time
from pathlib import Path

import redis.asyncio as aredis
from redis.exceptions import RedisError

from core.adapter_format import AdapterInvalid, validate_adapter
from core.keys import Keys
from core.versions import folder_name, is_base
from service.serving.routing import Routing, desired_versions
from service.serving.swap_backends import LocalAdapters

log = logging.getLogger(__name__)

RETRY_FIRST_S = 1.0    # a transient load failure is retried after 1, 2, 4, ... s
RETRY_MAX_S = 60.0


class AdapterWatcher:
    def __init__(self, redis: aredis.Redis, keys: Keys, engine, model_id: str, adapters_dir: Path,
                 *, max_resident: int = 3, resync_s: float = 5.0, metrics=None, slots: int = 8, backend=None):
        self.r, self.k, self.engine, self.model_id = redis, keys, engine, model_id
        self.dir = Path(adapters_dir)
        self.max_resident, self.resync_s, self.metrics = max_resident, resync_s, metrics
        self.backend = backend or LocalAdapters(engine, max(slots, max_resident))
        self.routing = Routing()
        self.refused: dict[str, str] = {}       # version -> why it may never be served (invalid)
        self.retry_at: dict[str, float] = {}    # version -> when to try again after a transient failure
        self._failures: dict[str, int] = {}     # version -> transient failures in a row (backoff)
        self.errors = 0                         # unexpected exceptions the loop survived
        self.published_at: dict[str, float] = {}
        self.first_served: set[str] = set()
        self.server_id = f"{socket.gethostname()}:{os.getpid()}"
        self._module_names = self.backend.module_names
        self._lock = asyncio.Lock()
        self._keep: set[str] = set()            # versions the last reconcile wants resident

    # --- what chat uses ---------------------------------------------------------------
    def route(self, session_id: str) -> str:
        return self.routing.version_for(session_id)

    @property
    def slots(self):
        """The local engine's AdapterSlots (local backend only)."""
        return self.backend.slots

    def loaded(self) -> list[str]:
        return self.backend.loaded()

    def servable(self, version: str) -> bool:
        return is_base(version) or version in self.loaded()

    def first_token(self, version: str) -> None:
        """Called when a reply on `version` streams its first token: publish -> served latency."""
        if version in self.first_served or version not in self.published_at:
            return
        self.first_served.add(version)
        if self.metrics:
            self.metrics.publish_to_first_token.observe(time.time() - self.published_at[version])

    # --- loop -------------------------------------------------------------------------
    async def run(self) -> None:
        pubsub = self.r.pubsub()
        while True:
            try:
                await pubsub.subscribe(self.k.adapters_changed)
                await self.reconcile()
                while True:
                    # A version still streaming could not be unloaded: look again soon, so its
                    # slot is free for the next version (a copy in place, not a new slot).
                    waiting = bool(self._unwanted())
                    msg = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=0.5 if waiting else self.resync_s)
                    if msg and msg.get("type") == "message":
                        self._note_publish(msg.get("data"))
                        await self.reconcile()
                    elif waiting:
                        await self._release_unused()
                    else:
                        await self.reconcile()
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except RedisError as exc:  # Redis away for a moment: keep serving what is loaded
                log.warning("adapter watcher: redis unavailable (%s); retrying", exc)
                await asyncio.sleep(1.0)
            except Exception:  # a bug or a surprise in one pass must not end hot swap for good
                self.errors += 1
                if self.metrics:
                    self.metrics.watcher_errors.inc()
                log.exception("adapter watcher: unexpected error (%d so far); serving goes on, watching again in 1 s",
                              self.errors)
                await asyncio.sleep(1.0)

    def _note_publish(self, data) -> None:
        try:
            notice = json.loads(data)
        except (TypeError, ValueError):
            return
        if notice.get("event") == "publish" and notice.get("version"):
            self.published_at.setdefault(str(notice["version"]), float(notice.get("at") or time.time()))

    async def reconcile(self) -> None:
        async with self._lock:
            h = {k.decode(): v.decode() for k, v in (await self.r.hgetall(self.k.adapters)).items()}
            stable, canary = h.get("stable", "base") or "base", h.get("canary", "")
            share = float(h.get("canary_share", 0) or 0)
            versions = json.loads(h.get("versions", "{}") or "{}")
            for v, entry in versions.items():
                if entry.get("created"):
                    self.published_at.setdefault(v, float(entry["created"]))
            want = desired_versions(stable, canary, h.get("rollback_target", ""), self.max_resident)
            fresh = []
            now = time.monotonic()
            await self.backend.refresh()
            for v in want:
                if v not in self.loaded() and v not in self.refused and self.retry_at.get(v, 0.0) <= now:
                    await self._load(v)
                    fresh.append(v)
            # Serve only what is loaded: an invalid new stable leaves the old one serving.
            new_stable = stable if self.servable(stable) else self.routing.stable
            new_canary = canary if canary and self.servable(canary) else ""
            routing = Routing(new_stable, new_canary, share if new_canary else 0.0)
            if routing != self.routing:
                log.info("routing: stable=%s canary=%s share=%.2f", routing.stable, routing.canary or "-",
                         routing.canary_share)
                self.routing = routing
            self._keep = set(want) | {routing.stable, routing.canary}
            await self._unload(self._unwanted())
            if fresh:
                self.backend.after_swap(fresh[-1])

    def _unwanted(self) -> list[str]:
        return [v for v in self.loaded() if v not in self._keep]

    async def _release_unused(self) -> None:
        async with self._lock:
            await self._unload(self._unwanted())

    async def _unload(self, versions: list[str]) -> None:
        for v in versions:   # refused (kept) while a stream still uses it
            if self.engine.refs.get(v, 0) > 0:   # a hint read off-thread; the engine re-checks
                continue
            if await self.backend.unload(v):
                log.info("unloaded adapter %s", v)
        if self.metrics:
            self.metrics.resident.set(len(self.loaded()))

    async def _load(self, version: str) -> None:
        folder = self.dir / folder_name(version) if version.isdigit() else self.dir / version
        t0 = time.perf_counter()
        timing = {}
        try:
            valid = await asyncio.to_thread(validate_adapter, folder, self.model_id, self._module_names)
            timing["validate_s"] = time.perf_counter() - t0
            await self.backend.load(version, folder, valid, timing)
        except AdapterInvalid as exc:   # the folder itself is bad: never serve it
            reason = str(exc)
            self.refused[version] = reason
            log.error("adapter %s refused: %s; serving goes on unchanged", version, reason)
            await self._record("swap", version, "refused", reason, time.perf_counter() - t0)
            return
        except Exception as exc:  # a read racing a copy, memory, a slot error: try again later
            n = self._failures[version] = self._failures.get(version, 0) + 1
            wait = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (n - 1))
            self.retry_at[version] = time.monotonic() + wait
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("adapter %s could not be loaded (%s); attempt %d, retrying in %.0f s", version, reason, n, wait)
            await self._record("swap", version, "failed", reason, time.perf_counter() - t0)
            return
        self._failures.pop(version, None)
        self.retry_at.pop(version, None)
        took = time.perf_counter() - t0
        log.info("adapter %s loaded in %.0f ms (%s)", version, took * 1000,
                 ", ".join(f"{k.removesuffix('_s')} {v * 1000:.0f}" for k, v in timing.items()))
        await self._record("swap", version, "loaded", "", took, timing)

    async def _record(self, event: str, version: str, result: str, reason: str, seconds: float,
                      timing: dict | None = None) -> None:
        if self.metrics:
            self.metrics.swaps.labels(result=result).inc()
            if result == "loaded":
                self.metrics.swap_seconds.observe(seconds)
        await self.r.xadd(self.k.adapter_swaps, {"event": event, "version": version, "result": result,
                                                 "reason": reason, "server": self.server_id,
                                                 "seconds": f"{seconds:.4f}", "at": repr(time.time()),
                                                 **{k: f"{v:.4f}" for k, v in (timing or {}).items()}},
                          maxlen=10000, approximate=True)

    def status(self) -> dict:
        return {"server": self.server_id, "routing": dataclasses.asdict(self.routing), "loaded": self.loaded(),
                "refused": self.refused, "engine": self.backend.kind, **self.backend.status(),
                "refs": self.engine.refs.copy()}   # one C-level copy: the engine thread adds keys meanwhile
