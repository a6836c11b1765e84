"""Hot swap, failover and the learning loop over the `vllm` engine: two real vLLM servers
(CPU build) on the tiny model, two rewardloop servers (REWARDLOOP_ENGINE=vllm) that use both,
one registry. Parrot LoRAs make versions tell apart by their greedy text. The tests run in
order (one registry for the module) and the last one kills a vLLM server."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from core.keys import Keys
from tests.support.clients import Chat, http
from tests.support.hotswap import nan_weights, status, wait_stable
from tests.support.models import publish_adapter, train_parrot_adapter
from tests.support.processes import ADMIN, FAST, REPO, Procs, base_env, server_starter
from tests.support.vllm_servers import TINY_ID, frozen, start_vllm, vllm_models
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vllms(models_dir, tmp_path_factory):
    procs = start_vllm(models_dir, tmp_path_factory.mktemp("vllm"), n=2)
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture(scope="module")
def parrots(models_dir):
    return {"alpha": train_parrot_adapter(models_dir, " alpha" * 10, steps=90),
            "beta": train_parrot_adapter(models_dir, " beta" * 10, steps=90, seed=1)}


class Deployment:
    def __init__(self, servers, prefix, data, redis_url, tmp):
        self.servers, self.prefix, self.data, self.redis_url, self.tmp = servers, prefix, data, redis_url, tmp

    def publish(self, model, **kw) -> str:
        return publish_adapter(self.redis_url, self.prefix, self.data, model, TINY_ID, **kw)


@pytest.fixture(scope="module")
def dep(vllms, models_dir, redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dep")
    prefix, data = f"vh{time.monotonic_ns() % 10 ** 8}:", tmp / "shared"
    data.mkdir()
    start, started = server_starter(redis_url, tmp)
    urls = ",".join(v.url for v in vllms)
    # long streams (1500 tokens): a swap must land while one is still streaming
    env = dict(REWARDLOOP_DATA_DIR=data, REWARDLOOP_ENGINE="vllm", REWARDLOOP_VLLM_URLS=urls,
               REWARDLOOP_TEMPERATURE=0, REWARDLOOP_MAX_NEW_TOKENS=1500, REWARDLOOP_CONTEXT_BUDGET=1800)
    servers = [start(prefix, **env), start(prefix, **env)]
    yield Deployment(servers, prefix, data, redis_url, tmp)
    for proc in started:
        proc.stop()


WAIT_S = 60  # two vLLM servers on two cores: swaps and unloads take longer than the local engine's


def ask(server, user, text="hello") -> tuple[str, str, str]:
    r = Chat(server, server.token(user)).ask(text)
    return r["text"], r["start"]["adapter_version"], r["start"]["reply_id"]


def test_publish_swaps_every_server_a_stream_keeps_its_version_and_rollback(dep, vllms, parrots, rdb):
    servers = dep.servers
    v1 = dep.publish(parrots["alpha"])
    wait_stable(servers, v1, WAIT_S)
    for v in vllms:   # loaded under its own name on every vLLM server before routing to it
        assert f"rl-v{v1}" in vllm_models(v.url)
    for s in servers:
        text, version, _ = ask(s, f"a{s.port}")
        assert version == v1 and text.split()[:3] == ["alpha"] * 3

    chat = Chat(servers[0], servers[0].token("streamer"))
    chat.send({"type": "user_message", "text": "hello", "client_msg_id": "long"})
    start = chat.recv_type("reply_start")
    chat.recv_type("token")
    v2 = dep.publish(parrots["beta"])
    wait_stable(servers, v2, WAIT_S)
    # vLLM streams the tiny model's 1500 tokens in about a second: on a busy machine the swap can
    # land after the stream ended. While it still runs, v1 must still be held for it; either way
    # its logged version (checked below) is v1 and every next reply is v2.
    assert status(servers[0])["refs"].get(v1, 0) in (0, 1)
    for s in servers:                                       # the next reply on every server: v2
        text, version, _ = ask(s, f"b{s.port}")
        assert version == v2 and text.split()[:3] == ["beta"] * 3
    while chat.recv()["type"] != "reply_end":
        pass
    stored = rdb.hgetall(Keys(dep.prefix).reply(start['reply_id']))
    assert stored["adapter_version"] == v1 and stored["text"].split()[:3] == ["alpha"] * 3
    swaps = [f for _, f in rdb.xrange(Keys(dep.prefix).adapter_swaps) if f["version"] == v2]
    # the same records as the local engine: every server loaded it, nothing failed. (A server whose
    # re-read of a busy vLLM server's listing briefly missed the name loads it again -- idempotent
    # -- and records that too, so count servers, not records.)
    assert {f["result"] for f in swaps} == {"loaded"} and len({f["server"] for f in swaps}) == len(servers), swaps
    # each record says how long its load took (measured in bench/hotswap.py, not asserted here)
    assert all(math.isfinite(float(f["load_s"])) and float(f["load_s"]) >= 0 for f in swaps)

    code, notice = http("POST", servers[0].url + "/admin/adapters/rollback", {"reason": "test"}, token=ADMIN)
    assert code == 200 and notice["stable"] == v1
    wait_stable(servers, v1, WAIT_S)
    for s in servers:
        text, version, _ = ask(s, f"c{s.port}")
        assert version == v1 and text.split()[0] == "alpha"

    # a version neither stable, canary nor rollback target, and no stream on it: unloaded from vLLM
    v3 = dep.publish(parrots["beta"])                 # stable v3, rollback target v1: v2 goes
    wait_stable(servers, v3, WAIT_S)
    for v in vllms:
        wait_for(lambda v=v: f"rl-v{v2}" not in vllm_models(v.url), WAIT_S, what=f"rl-v{v2} unloaded on {v.url}")
        assert {f"rl-v{v1}", f"rl-v{v3}"} <= vllm_models(v.url)


def test_a_corrupt_adapter_is_refused_and_vllm_keeps_serving(dep, vllms, parrots, rdb):
    servers = dep.servers
    good = dep.publish(parrots["alpha"])
    wait_stable(servers, good, WAIT_S)
    bad = dep.publish(parrots["beta"], tamper=nan_weights)
    for s in servers:
        assert "NaN" in wait_for(lambda s=s: status(s)["refused"].get(bad), WAIT_S, what="refusal")
        assert status(s)["routing"]["stable"] == good
        text, version, _ = ask(s, f"bad{s.port}")
        assert version == good and text.split()[0] == "alpha"
    for v in vllms:
        assert f"rl-v{bad}" not in vllm_models(v.url)   # never sent to vLLM
    swaps = [f for _, f in rdb.xrange(Keys(dep.prefix).adapter_swaps) if f["version"] == bad]
    assert len(swaps) == 2 and all(f["result"] == "refused" for f in swaps)


def test_the_learning_loop_closes_over_vllm(dep, vllms, parrots, rdb, models_dir):
    """Feedback on replies vLLM generated -> reward workers -> the learner -> publish -> the
    next reply is generated by vLLM on the new version."""
    from core.settings import Settings
    from learner.config import GateSettings, StepSettings, TrainConfig
    from learner.runner import run_once
    from tests.support.learner import NO_PROBE
    toml = dep.tmp / "reward.toml"
    toml.write_text("wait_window_s = 2.0\n")
    procs = Procs(dep.tmp)
    env = base_env(dep.redis_url, dep.prefix, dep.data, REWARDLOOP_REWARD_CONFIG=toml, **FAST)
    procs.start(env, "worker", "--queues", "rewards,ops", "--concurrency", "1")
    procs.start(env, "beat")
    try:
        good = dep.publish(parrots["alpha"])   # the learner continues the stable version: a sound one
        wait_stable(dep.servers, good, WAIT_S)
        s = dep.servers[1]
        replies = []
        # The holdout is a hash of each random reply id (a quarter): of 6 replies, 3 or more were
        # held out in 1 run of 6, leaving fewer than min_samples; of 10, 7 or more in 1 of 300.
        for i in range(10):
            chat = Chat(s, s.token(f"learn{i % 3}"))
            r = chat.ask(f"question {i}")
            assert chat.feedback(r["start"]["reply_id"], "thumbs", 1 if i % 2 else -1)["type"] == "ack"
            replies.append(r["start"]["reply_id"])
            chat.close()
        wait_for(lambda: all(rdb.hget(Keys(dep.prefix).reward(r), "state") == "rewarded" for r in replies), 90,
                 "rewards of the vLLM replies")
        settings = Settings(redis_url=dep.redis_url, prefix=dep.prefix, data_dir=dep.data, model_cache_dir=models_dir,
                            model="tiny-random", device="cpu", publish_mode="stable", canary_share=1.0,
                            learner_machine="dedicated")   # this test process must not renice itself
        cfg = TrainConfig(safety=NO_PROBE, minibatch_size=8, gate=GateSettings(holdout_share=0.25, cf_margin=2.0, cf_min_ess=1.0),
                          min_samples=4,
                          step=StepSettings(mode="fixed", lr=5e-3, min_steps=1, kl_target=10.0))
        result = run_once(settings, cfg, progress=False)
        assert result.state == "published", result
        version = str(result.version)
        for srv in dep.servers:
            wait_for(lambda srv=srv: version in (status(srv)["routing"]["stable"], status(srv)["routing"]["canary"]),
                     WAIT_S, what=f"v{version} routed on {srv.url}")
        for v in vllms:
            assert f"rl-v{version}" in vllm_models(v.url)
        _, served, rid = ask(dep.servers[0], "after-learning")
        assert served == version
        assert json.loads(rdb.hget(Keys(dep.prefix).reply(rid), "token_ids"))
    finally:
        procs.stop_all()


def test_adapters_import_serves_a_folder_trained_elsewhere(dep, vllms, parrots):
    folder = dep.tmp / "trained-elsewhere"
    parrots["beta"].save_pretrained(str(folder))       # a plain PEFT folder, no manifest
    env = base_env(dep.redis_url, dep.prefix, dep.data)
    out = subprocess.run([sys.executable, "-m", "service.cli", "adapters", "import", str(folder), "--publish", "stable"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    version = out.stdout.split("as version ")[1].split(",")[0]
    wait_stable(dep.servers, version, WAIT_S)
    for v in vllms:
        assert f"rl-v{version}" in vllm_models(v.url)
    text, served, _ = ask(dep.servers[1], "imported")
    assert served == version and text.split()[0] == "beta"


def test_a_vllm_server_killed_mid_stream_ends_that_stream_with_an_error_and_the_next_goes_elsewhere(dep, vllms, rdb):
    srv = dep.servers[0]
    chat = Chat(srv, srv.token("victim"))
    victim = None
    # vLLM streams the tiny model's 1500 tokens in about a second, and its running-requests gauge
    # lags: freeze both servers, give ours a second to forward what was already sent, and only a
    # reply our server still holds open is surely mid-generation on the frozen one.
    for attempt in range(5):
        chat.send({"type": "user_message", "text": "a long one", "client_msg_id": f"k{attempt}"})
        start = chat.recv_type("reply_start")
        chat.recv_type("token")
        with frozen(vllms):
            time.sleep(1.0)
            busy = {x["url"] for x in status(srv)["servers"] if x["inflight"] >= 1}
            victim = next((v for v in vllms if v.url in busy), None)
            if victim is not None:
                victim.kill()
        if victim is not None:
            break
        while chat.recv()["type"] != "reply_end":
            pass
    assert victim is not None, "no reply stayed in flight long enough to kill its vLLM server"
    other = next(v for v in vllms if v is not victim)
    frames = []
    while not frames or frames[-1]["type"] != "reply_end":
        frames.append(chat.recv())
    errors = [f for f in frames if f["type"] == "error"]
    assert errors and errors[0]["ref"] == start["reply_id"], frames[-3:]
    assert frames[-1]["finish_reason"] == "error"
    stored = rdb.hgetall(Keys(dep.prefix).reply(start['reply_id']))
    assert stored["finish_reason"] == "error" and victim.url in stored["error"]
    r = chat.ask("still there?")                         # the other vLLM server answers
    assert r["end"]["finish_reason"] in ("stop", "length") and r["text"]
    st = status(srv)
    [down] = [x for x in st["servers"] if x["url"] == victim.url]
    assert not down["up"] and down["last_error"]
    assert next(x for x in st["servers"] if x["url"] == other.url)["up"]
    assert http("GET", srv.url + "/readyz")[0] == 200    # one vLLM server left: still ready
