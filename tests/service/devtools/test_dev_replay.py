"""`rewardloop replay` and `rewardloop evaluate` on sessions logged by a real tiny-model server
(temperature 0.7): the serving version and seed reproduce every reply token for token (reusing
the server's KV prefix exactly as far as it did), and the
serving version's counterfactual estimate has weights 1 and equals the logged mean."""
from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from core.keys import Keys
from core.redis_conn import connect
from service.devtools.sessions import SessionLog
from tests.support.clients import Chat, http
from tests.support.devtools import cli, cli_json, finalize_rewards
from tests.support.processes import ADMIN, MODELS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def session(server, redis_url):
    chat = Chat(server, server.token("rita"))
    replies = []
    for text, thumbs in (("hello", 1), ("Say something", -1), ("What is the capital of France?", 1)):
        r = chat.ask(text)
        assert chat.feedback(r["start"]["reply_id"], "thumbs", thumbs)["type"] == "ack"
        replies.append(r)
    chat.close()
    finalize_rewards(redis_url, server.prefix)
    return chat.session_id, replies


@pytest.fixture(scope="module")
def offline(server):
    from core.modeling import load_model
    from service.devtools.offline_model import OfflineModel
    model = OfflineModel(load_model("tiny-random", MODELS, "cpu"), Path(server.env["REWARDLOOP_DATA_DIR"]) / "adapters")
    yield model
    model.close()


def _log(redis_url, server) -> SessionLog:
    return SessionLog(connect(redis_url), Keys(server.prefix))


def test_replay_with_serving_version_and_seed_is_token_identical(session, server, redis_url, offline):
    from service.devtools.replay import replay_session
    sid, replies = session
    detail = _log(redis_url, server).detail(sid, raw=True)
    assert all(r["params"]["temperature"] == 0.7 for r in detail["replies"])
    rows = replay_session(detail, offline, "base")
    assert len(rows) == 3 and all(r["identical"] and r["same_setup"] and r["same_path"] for r in rows)
    # turns 2 and 3 started from the server's prefix cache, and the replay reused exactly as much
    reused = [r["served"]["prefix_reused"] for r in rows]
    assert reused[0] == 0 and reused[1] > 0 and reused[2] > reused[1], reused
    assert [r["replay"]["text"] for r in rows] == [r["text"] for r in replies]
    for row in rows:
        # the served reply's log-prob under its own version is its behavior log-prob
        assert row["served_logp_under_replay"] == pytest.approx(row["served"]["behavior_logp"], abs=1e-3)
        assert row["replay"]["logp"] == pytest.approx(row["served"]["behavior_logp"], abs=1e-3)
    other = replay_session(detail, offline, "base", seed=12345)
    assert not all(r["identical"] for r in other) and all(r["replay"]["params"]["seed"] == 12345 for r in other)
    greedy = replay_session(detail, offline, "base", greedy=True)
    assert all(r["replay"]["params"]["temperature"] == 0 for r in greedy)


def test_replay_cli_text_json_and_html(session, server, monkeypatch, capsys, tmp_path):
    sid, _ = session
    html = tmp_path / "replay.html"
    out = cli_json(monkeypatch, capsys, server, "replay", sid, "--adapter", "base", "--json", "--html", str(html))
    assert out["version"] == "base" and all(r["identical"] for r in out["replay"])
    assert "<table>" in html.read_text() and "Replay of" in html.read_text()
    code, text, _ = cli(monkeypatch, capsys, server, "replay", sid)  # default: stable, which is base here
    assert code == 0 and "3 of 3 replies identical" in text
    code, _, err = cli(monkeypatch, capsys, server, "replay", sid, "--adapter", "9")
    assert code == 2 and "version 9 has no folder" in err


def test_rescore_under_another_reward_config(session, server, monkeypatch, capsys, tmp_path):
    sid, replies = session
    toml = tmp_path / "half.toml"
    toml.write_text("thumbs_weight = 0.5\ntruncated_weight = 0.0\ncontinuation_weight = 0.0\n")
    out = cli_json(monkeypatch, capsys, server, "replay", sid, "--reward-config", str(toml), "--json")
    assert "replay" not in out  # re-scoring alone needs no model
    rows = {r["reply_id"]: r for r in out["rescored"]}
    first = rows[replies[0]["start"]["reply_id"]]
    assert first["rescored"]["components"]["thumbs"] == 0.5 and first["logged"]["components"]["thumbs"] == 1.0
    assert first["difference"] == pytest.approx(first["rescored"]["reward"] - first["logged"]["reward"])
    assert rows[replies[1]["start"]["reply_id"]]["rescored"]["components"]["thumbs"] == -0.5
    code, _, err = cli(monkeypatch, capsys, server, "replay", sid, "--reward-config", str(tmp_path / "nope.toml"))
    assert code == 2 and "nope.toml" in err


def test_evaluate_serving_version_gives_weights_of_one(session, server, redis_url, offline, monkeypatch, capsys):
    from service.devtools.evaluate import evaluate_version
    res = evaluate_version(_log(redis_url, server), offline, "base", n_boot=200)
    assert res["n"] >= 3
    assert all(r["weight"] == pytest.approx(1.0, abs=1e-3) for r in res["replies"])
    rewards = [r["reward"] for r in res["replies"]]
    assert res["logged_mean"] == pytest.approx(sum(rewards) / len(rewards))
    assert res["snips"] == pytest.approx(res["logged_mean"], abs=1e-3)
    assert res["ips"] == pytest.approx(res["logged_mean"], abs=1e-3)
    assert res["ess"] == pytest.approx(res["n"], rel=1e-3) and "effective sample size" in res["warning"]
    code, text, _ = cli(monkeypatch, capsys, server, "evaluate", "--adapter", "base", "--limit", "50")
    assert code == 0 and "SNIPS" in text and "WARNING" in text


def test_replay_reproduces_replies_served_by_an_adapter(server_factory, redis_url, prefix, tmp_path, models_dir):
    """A LoRA version published through the real registry: the server serves it; replay on that
    version, with the logged seed, is identical."""
    from core.modeling import load_model
    from service.devtools.offline_model import OfflineModel
    from service.devtools.replay import replay_session
    from tests.support.models import publish_adapter, train_parrot_adapter
    srv = server_factory(prefix=prefix)
    data = Path(srv.env["REWARDLOOP_DATA_DIR"])
    adapter = train_parrot_adapter(models_dir, "Paris is the capital.", steps=60)
    version = publish_adapter(redis_url, prefix, data, adapter, "rewardloop/tiny-random-llama")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        loaded = http("GET", srv.url + "/admin/adapters", token=ADMIN)[1].get("server") or {}
        if version in str(loaded.get("loaded", "")):
            break
        time.sleep(0.3)
    chat = Chat(srv, srv.token("vera"))
    r = chat.ask("hello")
    assert r["start"]["adapter_version"] == version
    chat.close()
    detail = SessionLog(connect(redis_url), Keys(prefix)).detail(chat.session_id, raw=True)
    model = OfflineModel(load_model("tiny-random", MODELS, "cpu"), data / "adapters")
    try:
        rows = replay_session(detail, model, version)
        assert rows[0]["identical"] and rows[0]["replay"]["text"] == r["text"]
        assert rows[0]["served_logp_under_replay"] == pytest.approx(rows[0]["served"]["behavior_logp"], abs=1e-3)
        base = replay_session(detail, model, "base")
        assert not base[0]["identical"] and math.isfinite(base[0]["served_logp_under_replay"])
    finally:
        model.close()
