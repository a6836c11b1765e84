"""The `vllm` engine: the local Engine's interface over one or more vLLM OpenAI servers.

Each request goes to one server's /v1/completions with rewardloop's own prompt token ids
(the logged prompt is exactly what was served), the reply's temperature, top_p and seed,
`logprobs: 0` and `return_token_ids: true`, streamed. The servers run with
`--logprobs-mode processed_logprobs`, so the log-prob of each sampled token is the one under
the distribution it was drawn from (after temperature and top-p): the behavior log-prob the
learner's importance ratios need, as the local engine records it. The text is decoded here,
from the token ids, by the local engine's incremental detokenizer; the stop token is logged
with its log-prob and no text; greedy replies log 0.0. What goes over HTTP (request bodies,
streamed chunks, model lists, metrics) is read and written by vllm_wire.py.

Adapter versions are LoRAs loaded at runtime (`/v1/load_lora_adapter`) under one name per
version, `rl-v{N}`, on every server; a request is sent only to a server that lists its
version. A server that refuses connections or breaks a stream is marked down (reported in
`status()` and the log) and skipped until it answers again; a request that had streamed
nothing yet moves to the next server, one that had ends with FinishReason.ERROR.

Runs on the server's event loop (httpx, no thread): submit() creates a task per request;
cancel() cancels that task, which closes the HTTP stream, and vLLM aborts the request.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path

import httpx

from core.adapter_format import ValidAdapter
from core.modeling import load_tokenizer_and_shape  # noqa: F401 (re-exported: runtime, bench and tests import it here)
from core.versions import is_base
from service.engine.detokenizer import IncrementalDetokenizer
from service.engine.events import (
    EndEvent,
    EngineBusy,
    FinishReason,
    GenerationHandle,
    GenerationRequest,
    TokenEvent,
    error_text,
    validate_request,
)
from service.engine.interface import AdapterLoad
from service.engine.scheduler import admits, retry_after
from service.engine.vllm_wire import (
    ADAPTER_PREFIX,
    AdapterRefused,
    VllmError,
    VllmServer,
    adapter_name,
    completion_body,
    error_message,
    lora_in_use,
    parse_chunk,
)

log = logging.getLogger(__name__)

RETRY_DOWN_S = 2.0        # a server marked down is tried again after this long


class VllmHandle(GenerationHandle):
    """cancel() also cancels the request's task: the HTTP stream closes, vLLM aborts."""
    task: asyncio.Task | None = None

    def cancel(self) -> None:
        super().cancel()
        if self.task is not None:
            self._loop.call_soon_threadsafe(self.task.cancel)


class VllmEngine:
    def __init__(self, urls: list[str], tokenizer, vocab_size: int, stop_token_ids: set[int], *,
                 max_queue: int | None = None, timeout_s: float = 120.0, connect_timeout_s: float = 5.0):
        if not urls:
            raise ValueError("the vllm engine needs at least one server URL (REWARDLOOP_VLLM_URLS)")
        self.servers = [VllmServer(u.rstrip("/")) for u in urls]
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.stop_ids = set(stop_token_ids)
        self.max_queue = max_queue
        self.waiting = 0                 # submitted, no first token yet
        self.failed_requests = 0
        self.steps = 0                   # tokens streamed
        self.refs: dict[str, int] = {}   # adapter version -> streams using it
        self.prefix = None               # vLLM keeps its own prefix cache (--enable-prefix-caching)
        self.adapters = None
        self.prefill_s = 0.5             # running mean time to first token, for retry_after
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._client: httpx.AsyncClient | None = None
        self._stopped = False
        self._turn = 0
        logging.getLogger("httpx").setLevel(logging.WARNING)   # not a log line per request and per poll

    # --- life ---------------------------------------------------------------------
    def start(self) -> None:
        """Blocking (off the event loop): wait is done by `wait_ready`; nothing to start."""

    def wait_ready(self, timeout_s: float) -> None:
        """Block until at least one server lists its base model (RuntimeError naming each
        server's last error after timeout_s)."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=httpx.Timeout(5.0)) as client:
            while True:
                for s in self.servers:
                    try:
                        self._note_models(s, client.get(s.url + "/v1/models"))
                    except (httpx.HTTPError, VllmError, ValueError) as exc:
                        self._mark_down(s, exc)
                if any(s.up and s.base for s in self.servers):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError("no vLLM server answered in %.0f s: %s" % (timeout_s, "; ".join(
                        f"{s.url}: {s.last_error or 'no base model listed'}" for s in self.servers)))
                time.sleep(0.5)

    @property
    def alive(self) -> bool:
        """Can generate: not shut down and some server is up (or due for another try)."""
        now = time.monotonic()
        return not self._stopped and any(s.usable(now) for s in self.servers)

    def shutdown(self, timeout: float = 10) -> None:
        self._stopped = True

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:   # made on the event loop that uses it
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            self._client = httpx.AsyncClient(timeout=self._timeout, limits=limits)
        return self._client

    # --- requests -----------------------------------------------------------------
    def validate(self, request: GenerationRequest) -> None:
        validate_request(request, self.vocab_size)

    def retry_after(self) -> int:
        return retry_after(self.waiting, self.prefill_s, servers=len(self.servers))

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None) -> GenerationHandle:
        """Start a request on the event loop (ValueError if malformed, EngineBusy past max_queue)."""
        self.validate(request)
        loop = loop or asyncio.get_running_loop()
        handle = VllmHandle(loop)
        now = time.time()
        if self._stopped:
            handle._emit(EndEvent.unstarted(FinishReason.ERROR, now, now, "the engine has stopped (shutdown)"))
            return handle
        if not admits(self.waiting, self.max_queue):
            raise EngineBusy(self.waiting, self.retry_after())
        self.waiting += 1
        name = request.adapter or "base"
        self.refs[name] = self.refs.get(name, 0) + 1
        handle.task = loop.create_task(self._generate(request, handle, now, name))
        return handle

    def cancel(self, handle: GenerationHandle) -> None:
        """Stop a request: its HTTP stream closes, vLLM aborts it, it ends CANCELLED."""
        handle.cancel()

    def _pick(self, model: str | None, tried: set[str]) -> VllmServer | None:
        """The least busy usable server that lists `model` (None = the base), not tried yet."""
        now = time.monotonic()
        fit = [s for s in self.servers if s.url not in tried and s.usable(now)
               and (model is None or model in s.listed)]
        if not fit:
            return None
        self._turn += 1
        order = {s.url: (i - self._turn) % len(self.servers) for i, s in enumerate(self.servers)}
        return min(fit, key=lambda s: (not s.up, s.inflight, order[s.url]))

    async def _generate(self, req: GenerationRequest, handle: VllmHandle, queued_at: float, name: str) -> None:
        model = None if is_base(req.adapter) else adapter_name(req.adapter)
        state = _Stream(handle, req, self.tokenizer)
        reason, error = FinishReason.ERROR, None
        tried: set[str] = set()
        try:
            while True:
                if handle.cancelled.is_set():
                    reason = FinishReason.CANCELLED
                    break
                server = self._pick(model, tried)
                if server is None:
                    error = self._none_left(model, tried)
                    break
                tried.add(server.url)
                try:
                    reason = await self._stream(server, model, req, state)
                    break
                except (httpx.HTTPError, VllmError, ValueError) as exc:
                    if isinstance(exc, VllmError) and exc.status == 404 and model is not None:
                        server.listed.discard(model)   # restarted without it: the watcher loads it again
                    elif not (isinstance(exc, VllmError) and 400 <= exc.status < 500):
                        self._mark_down(server, exc)
                    if state.ids or (isinstance(exc, VllmError) and exc.status == 400):
                        error = f"vLLM server {server.url} failed: {type(exc).__name__}: {exc}"[:500]
                        break
                    log.warning("vLLM server %s failed before the first token (%s); trying another", server.url, exc)
        except asyncio.CancelledError:   # the user's stop (or shutdown): the HTTP stream is closed
            reason = FinishReason.CANCELLED
        except Exception as exc:  # a bug here ends this request alone
            log.exception("vllm request failed")
            error = error_text(exc)
        finally:
            if reason is FinishReason.ERROR:
                self.failed_requests += 1
            self._left_queue(state)
            self.refs[name] -= 1
            tail = state.tail()
            handle._emit(EndEvent(reason, len(state.ids), queued_at, state.first_token_at, time.time(),
                                  error if reason is FinishReason.ERROR else None, text_tail=tail))

    def _none_left(self, model: str | None, tried: set[str]) -> str:
        if tried:
            return "every vLLM server failed: " + "; ".join(f"{s.url}: {s.last_error}" for s in self.servers
                                                            if s.url in tried)
        if model is not None:
            return f"adapter {model} is not loaded on any vLLM server that is up"
        return "no vLLM server is up: " + "; ".join(f"{s.url}: {s.last_error}" for s in self.servers)

    async def _stream(self, server: VllmServer, model: str | None, req: GenerationRequest,
                      state: _Stream) -> FinishReason:
        body = completion_body(model or server.base or "", req, sorted(self.stop_ids))
        server.inflight += 1
        try:
            async with self.client().stream("POST", server.url + "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    raise VllmError(error_message(await resp.aread()), resp.status_code)
                finish = None
                async for line in resp.aiter_lines():
                    try:
                        chunk = parse_chunk(line)
                    except StopIteration:
                        break
                    if chunk is None:
                        continue
                    ids, lps, finish = chunk
                    for tok, lp in zip(ids, lps):
                        if state.waiting:
                            self._left_queue(state)
                            self.prefill_s += 0.2 * (time.time() - state.started - self.prefill_s)
                        self.steps += 1
                        if state.emit(tok, lp, self.stop_ids):
                            return FinishReason.STOP
                if finish not in ("stop", "length"):
                    raise VllmError(f"the stream ended with finish reason {finish!r}")
            server.up, server.failures = True, 0
            return FinishReason.LENGTH if finish == "length" else FinishReason.STOP
        finally:
            server.inflight -= 1

    def _left_queue(self, state: _Stream) -> None:
        if state.waiting:
            state.waiting = False
            self.waiting -= 1

    # --- servers and adapters -------------------------------------------------------
    def _mark_down(self, server: VllmServer, exc: BaseException) -> None:
        server.last_error = f"{type(exc).__name__}: {exc}"[:300]
        server.failures += 1
        server.retry_at = time.monotonic() + RETRY_DOWN_S
        if server.up:
            log.error("vLLM server %s is down (%s); skipping it", server.url, server.last_error)
        server.up = False

    def _note_models(self, server: VllmServer, resp: httpx.Response) -> None:
        if resp.status_code != 200:
            raise VllmError(error_message(resp.content), resp.status_code)
        server.note_models(resp.json()["data"])
        if not server.up:
            log.warning("vLLM server %s answers again", server.url)
        server.up, server.last_error = True, ""

    async def refresh(self) -> None:
        """Ask every server what it serves (also how a server marked down comes back)."""
        async def one(s: VllmServer):
            try:
                self._note_models(s, await self.client().get(s.url + "/v1/models", timeout=5.0))
            except (httpx.HTTPError, VllmError, ValueError, KeyError) as exc:
                self._mark_down(s, exc)
        await asyncio.gather(*(one(s) for s in self.servers))

    def live(self) -> list[VllmServer]:
        return [s for s in self.servers if s.up]

    def loaded_versions(self) -> list[str]:
        """Versions listed on every server that is up (and at least one is)."""
        live = self.live()
        if not live:
            return []
        names = set.intersection(*(s.listed for s in live))
        return sorted(n[len(ADAPTER_PREFIX):] for n in names if n.startswith(ADAPTER_PREFIX))

    async def load_adapter(self, version: str, folder: Path, valid: ValidAdapter | None = None) -> AdapterLoad:
        """Load `folder` as rl-v{version} on every server that is up and lacks it, then confirm
        it is listed there (AdapterRefused on a 4xx, VllmError/httpx errors otherwise). `valid` is
        not needed: each server reads the folder itself."""
        started = time.perf_counter()
        name, path = adapter_name(version), str(Path(folder).resolve())
        for s in self.live():   # one name, one set of weights: never serve another registry's v{N}
            if name in s.listed and s.roots.get(name) not in (None, "", path):
                raise AdapterRefused(f"vLLM server {s.url} already serves {name} from {s.roots[name]}, not {path}: "
                                     "are these vLLM servers shared with another rewardloop deployment?")
        todo = [s for s in self.live() if name not in s.listed]

        async def one(s: VllmServer):
            resp = await self.client().post(s.url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
            msg = error_message(resp.content)
            if resp.status_code != 200 and "already" not in msg:
                cls = AdapterRefused if 400 <= resp.status_code < 500 else VllmError
                raise cls(f"vLLM server {s.url} refused {name}: {msg}")
            self._note_models(s, await self.client().get(s.url + "/v1/models"))
            if name not in s.listed:
                raise VllmError(f"vLLM server {s.url} does not list {name} after loading it")
        results = await asyncio.gather(*(one(s) for s in todo), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            refused = next((r for r in failed if isinstance(r, AdapterRefused)), None)
            raise refused or failed[0]
        return AdapterLoad(time.perf_counter() - started)

    async def in_use_on_servers(self, name: str) -> bool:
        """Whether any vLLM server runs or queues a request on LoRA `name`, for any client (another
        rewardloop server's stream too), per its newest `vllm:lora_requests_info` sample; a sample
        older than 10 s is an idle server's last word, not a running request."""
        async def one(s: VllmServer) -> bool:
            try:
                text = (await self.client().get(s.url + "/metrics", timeout=5.0)).text
            except httpx.HTTPError:
                return False
            busy, newest = lora_in_use(text, name)
            return busy and time.time() - newest < 10
        return any(await asyncio.gather(*(one(s) for s in self.live())))

    async def unload_adapter(self, version: str) -> bool:
        """Unload rl-v{version} everywhere; refused (False) while a stream uses it (here, or on a
        vLLM server: another rewardloop server's stream)."""
        name = adapter_name(version)
        if self.refs.get(version, 0) > 0 or await self.in_use_on_servers(name):
            return False
        for s in self.live():
            if name in s.listed:
                s.listed.discard(name)   # no new request goes there from now on
                try:
                    resp = await self.client().post(s.url + "/v1/unload_lora_adapter", json={"lora_name": name})
                    if resp.status_code != 200:
                        log.warning("vLLM server %s: unloading %s: %s", s.url, name, error_message(resp.content))
                except httpx.HTTPError as exc:
                    self._mark_down(s, exc)
        return True

    def status(self) -> dict:
        return {"engine": "vllm", "servers": [
            {"url": s.url, "up": s.up, "base": s.base, "root": s.root, "inflight": s.inflight,
             "failures": s.failures, "last_error": s.last_error, "adapters": sorted(n for n in s.listed if n != s.base)}
            for s in self.servers]}


class _Stream:
    """One reply's tokens and text, decoded as the local engine decodes them."""

    def __init__(self, handle: GenerationHandle, req: GenerationRequest, tokenizer):
        self.handle, self.greedy = handle, req.params.greedy
        self.waiting = True          # counted in the engine's `waiting` until the first token
        self.ids: list[int] = []
        self.detok = IncrementalDetokenizer(tokenizer)   # the stop token never enters it
        self.started = time.time()
        self.first_token_at: float | None = None

    def emit(self, tok: int, logprob: float | None, stop_ids: set[int]) -> bool:
        """Stream one token; True when it is a stop token (logged with its log-prob, no text)."""
        if self.first_token_at is None:
            self.first_token_at = time.time()
        # greedy: 0.0 like the local engine (vLLM reports the untempered log-prob there)
        lp = 0.0 if self.greedy else math.nan if logprob is None else float(logprob)
        if math.isnan(lp) or lp == math.inf:
            raise VllmError(f"vLLM sent no usable log-prob for token {tok} ({logprob!r}); is it started with "
                            "--logprobs-mode processed_logprobs?")
        self.ids.append(tok)
        if tok in stop_ids:
            self.handle._emit(TokenEvent(tok, lp, ""))
            return True
        self.handle._emit(TokenEvent(tok, lp, self.detok.push(tok)))   # '' while half a character is held
        return False

    def tail(self) -> str:
        """Text held back at the last token (half a UTF-8 character), sent before the end."""
        return self.detok.tail()
