"""An engine thread that dies anyway: /readyz says 503 at once (a load balancer stops
sending), the process is asked to drain and exit (non-zero: see `cmd_serve`), and a chat
gets a clear answer instead of waiting forever. The server runs in this process (uvicorn in
a thread, real Redis, tiny model) so that the test can reach its engine thread."""
from __future__ import annotations

import json
import threading
import time

import pytest
from websockets.sync.client import connect

from tests.support.clients import http
from tests.support.processes import MODELS, SECRET

pytestmark = pytest.mark.integration


class _Die(BaseException):
    pass


@pytest.fixture
def inproc_server(models_dir, redis_url, prefix, tmp_path):
    import uvicorn

    from core.embedded_redis import free_port
    from core.settings import Settings
    from service.app import create_app
    from service.runtime import Runtime
    settings = Settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path, model_cache_dir=MODELS,
                        model="tiny-random", secret=SECRET, max_new_tokens=12)
    runtime = Runtime.create(settings, redis_url)
    exit_asked = threading.Event()
    runtime.on_engine_death = exit_asked.set    # not SIGTERM: that would stop pytest
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(runtime), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if http("GET", url + "/readyz", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        raise RuntimeError("in-process server not ready")
    yield url, runtime, exit_asked
    server.should_exit = True
    thread.join(30)


def test_a_dead_engine_thread_turns_readyz_503_within_a_second(inproc_server):
    url, runtime, exit_asked = inproc_server
    assert http("GET", url + "/readyz")[0] == 200

    def die():
        raise _Die("injected engine death")
    runtime.engine.call(die)
    t0 = time.monotonic()
    while http("GET", url + "/readyz", timeout=2)[0] != 503:
        assert time.monotonic() - t0 < 1.0, "/readyz still 200 a second after the engine died"
        time.sleep(0.02)
    status, body = http("GET", url + "/readyz")
    assert status == 503 and body["model"] is False and "_Die" in body["engine_error"]
    assert exit_asked.wait(1.0), "the process was not asked to drain and exit"
    assert runtime.engine_failure and "injected" in runtime.engine_failure
    with connect(url.replace("http", "ws") + "/ws/chat", open_timeout=10) as ws:   # a chat is told, not left waiting
        frame = json.loads(ws.recv(timeout=5))
        assert frame["type"] == "error" and frame["code"] == "not_ready"
