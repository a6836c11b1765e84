"""Chat throughput while the learner trains, end to end on a real server (tiny model): the
server's heartbeat in `servers` (the busy signal), its /metrics split by learner state, the ops
monitor's fold and /ops/api/state. A learner run is the learner lock held, as the learner holds it."""
from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.keys import Keys
from core.server_load import parse_all
from tests.support.clients import Chat, get, http
from tests.support.processes import ADMIN
from tests.support.waiting import wait_for
from worker.ops.state import build_state
from worker.ops.store import OpsStore

pytestmark = pytest.mark.integration


def samples(text: str, name: str) -> dict[str, float]:
    return {s.labels.get("learner", ""): s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == name}


def test_chat_tokens_and_ttft_are_split_by_whether_a_learner_run_is_on(server, rdb):
    keys = Keys(server.prefix)
    chat = Chat(server, server.token("load-user"))
    assert chat.ask("hello")["end"]["n_tokens"] > 0
    wait_for(lambda: any(ld.counters.get("tokens_idle") for ld in parse_all(rdb.hgetall(keys.servers)).values()),
             10, "the heartbeat with idle tokens")

    rdb.set(keys.learn_lock, "a-learner-run", px=60_000)
    try:
        wait_for(lambda: all(ld.training for ld in parse_all(rdb.hgetall(keys.servers)).values()), 10,
                 "the server seeing the learner run")
        assert chat.ask("and now?")["end"]["n_tokens"] > 0
        _, text = get(server.url + "/metrics")
        assert samples(text, "rewardloop_learner_training")[""] == 1.0
        wait_for(lambda: (parse_all(rdb.hgetall(keys.servers)) or {"": None}).popitem()[1].counters.get(
            "tokens_training"), 10, "the heartbeat with training tokens")
    finally:
        rdb.delete(keys.learn_lock)
    _, text = get(server.url + "/metrics")
    tokens = samples(text, "rewardloop_chat_tokens_total")
    assert tokens["idle"] > 0 and tokens["training"] > 0
    assert samples(text, "rewardloop_chat_time_to_first_token_seconds_count") == {"idle": 1.0, "training": 1.0}
    assert samples(text, "rewardloop_chat_busy_seconds_total")["idle"] > 0

    store = OpsStore(rdb, keys)
    grown = store.fold_servers(time.time())
    assert grown["chat_tokens_training|*"] == tokens["training"]
    assert store.fold_servers(time.time()).get("chat_tokens_training|*") is None    # only what grew
    chat_state = build_state(store, 10, time.time())["chat"]
    assert chat_state["training"]["replies"] == 1 and chat_state["training"]["tokens"] == tokens["training"]
    assert chat_state["idle"]["tokens_per_s"] > 0 and len(chat_state["servers"]) == 1
    status, body = http("GET", server.url + "/ops/api/state?minutes=10", token=ADMIN)
    assert status == 200 and body["chat"]["training"]["replies"] == 1
    assert len(body["series"]["chat"]["tokens_per_s_training"]) == len(body["series"]["t"])
    _, text = get(server.url + "/metrics")
    assert samples(text, "rewardloop_chat_tokens_per_second")["training"] > 0
    chat.close()
