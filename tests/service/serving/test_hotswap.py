"""Hot swap with two real server processes, real Redis and two real LoRA adapters whose
greedy outputs differ ("alpha alpha ..." and "beta beta ...")."""
from __future__ import annotations

import time

import pytest

from core.keys import Keys
from service.serving.routing import session_bucket
from tests.support.clients import Chat, http
from tests.support.hotswap import ask_ids, corrupt, nan_weights, other_base, status, wait_stable
from tests.support.models import publish_adapter, train_parrot_adapter
from tests.support.processes import ADMIN
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
TINY_ID = "rewardloop/tiny-random-llama"


@pytest.fixture(scope="module")
def parrots(models_dir):
    # one token per word: a two-token word ("bravo") does not train reliably on the tiny model
    return {"alpha": train_parrot_adapter(models_dir, " alpha" * 10, steps=90),
            "beta": train_parrot_adapter(models_dir, " beta" * 10, steps=90, seed=1)}


@pytest.fixture
def pair(server_factory, tmp_path, redis_url):
    """Two servers sharing one prefix and one data dir (the adapters volume)."""
    prefix, data = f"hs{time.monotonic_ns() % 10 ** 8}:", tmp_path / "shared"
    data.mkdir()
    env = dict(REWARDLOOP_DATA_DIR=data, REWARDLOOP_TEMPERATURE=0, REWARDLOOP_MAX_NEW_TOKENS=600,
               REWARDLOOP_CONTEXT_BUDGET=2048)
    servers = [server_factory(prefix, **env), server_factory(prefix, **env)]
    publish = lambda model, **kw: publish_adapter(redis_url, prefix, data, model, TINY_ID, **kw)
    return servers, publish, data


def test_a_stream_keeps_its_version_while_the_next_request_gets_the_new_one(pair, parrots, rdb):
    servers, publish, _ = pair
    v1 = publish(parrots["alpha"])
    wait_stable(servers, v1)
    reference, version = ask_ids(servers[0], "ref")
    assert version == v1 and reference.split()[:3] == ["alpha"] * 3

    chat = Chat(servers[0], servers[0].token("streamer"))
    chat.send({"type": "user_message", "text": "hello", "client_msg_id": "long"})
    start = chat.recv_type("reply_start")
    assert start["adapter_version"] == v1
    chat.recv_type("token")
    v2 = publish(parrots["beta"])
    wait_stable(servers, v2)
    # the swap happened while the v1 stream was still running
    assert status(servers[0])["refs"].get(v1, 0) == 1
    text = ""
    while True:
        f = chat.recv()
        if f["type"] == "token":
            text += f["text"]
        elif f["type"] == "reply_end":
            break
    stored = rdb.hgetall(Keys(servers[0].prefix).reply(start['reply_id']))
    assert stored["adapter_version"] == v1
    assert stored["text"] == reference          # exactly v1's greedy output, to the last token
    for s in servers:                            # every server now serves v2
        text, version = ask_ids(s, f"after-{s.port}")
        assert version == v2 and text.split()[:3] == ["beta"] * 3
    assert status(servers[0])["refs"].get(v1, 0) == 0


def test_rollback_and_canary_split(pair, parrots):
    servers, publish, _ = pair
    v1 = publish(parrots["alpha"])
    v2 = publish(parrots["beta"])
    wait_stable(servers, v2)
    code, notice = http("POST", servers[0].url + "/admin/adapters/rollback", {"reason": "test"}, token=ADMIN)
    assert code == 200 and notice["stable"] == v1
    wait_stable(servers, v1)
    for s in servers:
        text, version = ask_ids(s, f"rb-{s.port}")
        assert version == v1 and text.split()[0] == "alpha"
    # v2 as a 50% canary: sessions split by the hash of their id, on every server alike
    v3 = publish(parrots["beta"], mode="canary", canary_share=0.5)
    for s in servers:
        wait_for(lambda s=s: status(s)["routing"]["canary"] == v3, what="canary routing")
    seen = set()
    for i in range(8):
        s = servers[i % 2]
        chat = Chat(s, s.token(f"canary{i}"))
        expected = v3 if session_bucket(chat.session_id) < 0.5 else v1
        first = chat.ask("hello")
        second = chat.ask("hello again")
        assert first["start"]["adapter_version"] == second["start"]["adapter_version"] == expected
        assert first["text"].split()[0] == ("beta" if expected == v3 else "alpha")
        seen.add(expected)
    assert seen == {v1, v3}
    # a request may pin a loaded version explicitly
    pinned = Chat(servers[1], servers[1].token("pin")).ask("hello", adapter_version="base")
    assert pinned["start"]["adapter_version"] == "base"


@pytest.mark.parametrize("tamper, reason", [(corrupt, "checksum"), (nan_weights, "NaN"), (other_base, "base model")])
def test_invalid_adapters_are_refused_and_serving_goes_on(pair, parrots, rdb, tamper, reason):
    servers, publish, _ = pair
    v1 = publish(parrots["alpha"])
    wait_stable(servers, v1)
    bad = publish(parrots["beta"], tamper=tamper)
    for s in servers:
        refused = wait_for(lambda s=s: status(s)["refused"].get(bad), what="refusal")
        assert reason in refused
        assert status(s)["routing"]["stable"] == v1
        text, version = ask_ids(s, f"after-bad-{s.port}")
        assert version == v1 and text.split()[0] == "alpha"
    swaps = [f for _, f in rdb.xrange(Keys(servers[0].prefix).adapter_swaps) if f["version"] == bad]
    assert len(swaps) == 2 and all(f["result"] == "refused" for f in swaps)


def test_reference_counts_and_unloading(pair, parrots):
    servers, publish, _ = pair
    srv = servers[0]
    v1 = publish(parrots["alpha"])
    wait_stable(servers, v1)
    # stop: the count returns to zero
    chat = Chat(srv, srv.token("refs"))
    chat.send({"type": "user_message", "text": "hello", "client_msg_id": "a"})
    start = chat.recv_type("reply_start")
    chat.recv_type("token")
    assert status(srv)["refs"].get(v1) == 1
    chat.send({"type": "stop", "reply_id": start["reply_id"]})
    chat.recv_type("reply_end")
    assert status(srv)["refs"].get(v1) == 0
    # a stream holds v1 while three newer versions push it out of the resident set
    chat.send({"type": "user_message", "text": "hello", "client_msg_id": "b"})
    chat.recv_type("reply_start")
    chat.recv_type("token")
    newest = [publish(parrots["beta"]) for _ in range(3)]
    wait_stable(servers, newest[-1])
    st = status(srv)
    assert v1 in st["loaded"] and st["refs"].get(v1) == 1   # still streaming: not unloaded
    chat.close()                                            # disconnect mid-reply
    wait_for(lambda: status(srv)["refs"].get(v1) == 0, what="refs back to 0 after disconnect")
    wait_for(lambda: v1 not in status(srv)["loaded"], what="v1 unloaded once unused")
    assert len(status(srv)["loaded"]) <= 3
