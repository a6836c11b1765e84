"""Conversations that last, over the websocket and HTTP against a real server and Redis: the
tree of a conversation (edit, regenerate, select), the history the model sees = the branch,
the signals that choices between branches give, reason tags, and the per-user sessions API
(list, search, read, rename, delete = forget that one session)."""
from __future__ import annotations

import json
import time
import urllib.request

import pytest

from core.keys import Keys
from core.records import ReplyRecord
from tests.support.clients import Chat, http
from tests.support.devtools import cli, finalize_rewards
from tests.support.processes import ADMIN

pytestmark = pytest.mark.integration


def send(chat: Chat, text: str, **extra) -> dict:
    chat.send({"type": "user_message", "text": text, "client_msg_id": f"m{time.monotonic_ns()}", **extra})
    return chat.collect()


def error_for(chat: Chat, frame: dict) -> dict:
    chat.send(frame)
    return chat.recv_type("error")


def events(rdb, prefix: str, **match) -> list[dict]:
    return [f for _, f in rdb.xrange(Keys(prefix).events) if all(f.get(k) == v for k, v in match.items())]


def reply(rdb, prefix: str, rid: str) -> dict:
    return rdb.hgetall(Keys(prefix).reply(rid))


def history_of(rdb, prefix: str, rid: str) -> list[str]:
    """The conversation the model saw for this reply (its prompt, without the system message)."""
    msgs = json.loads(reply(rdb, prefix, rid)["prompt_messages"])
    return [m["content"] for m in msgs if m["role"] != "system"]


WHY = {"type": "feedback", "feedback_id": "why-1", "kind": "reasons", "tags": ["inaccurate", "unsafe"],
       "comment": "  the year is wrong  "}


@pytest.fixture(scope="module")
def tree(server, redis_url):
    """alice's conversation: first -> second, then 'second' edited, then regenerated, then the
    edited branch selected again and continued; r4 thumbed up (twice), r5 thumbed down with
    reasons (sent twice, the same feedback id); then every reward finalized."""
    chat = Chat(server, server.token("alice"))
    r1 = send(chat, "first question", parent_id="")
    r2 = send(chat, "second question", parent_id=r1["start"]["reply_id"])
    ids = {"r1": r1["start"]["reply_id"], "r2": r2["start"]["reply_id"]}
    r3 = send(chat, "second question, edited", parent_id=ids["r1"], edit_of=ids["r2"])
    ids["r3"] = r3["start"]["reply_id"]
    ack = chat.feedback(ids["r3"], "regenerate")
    assert ack["type"] == "ack"
    ids["r4"] = chat.collect()["start"]["reply_id"]
    chat.send({"type": "select", "reply_id": ids["r3"]})
    ids["selected"] = chat.recv_type("selected")
    ids["r5"] = send(chat, "third question", parent_id=ids["r3"])["start"]["reply_id"]
    ids["texts"] = {"r1": r1["text"], "r2": r2["text"], "r3": r3["text"]}
    ids["acks"] = [chat.feedback(ids["r4"], "thumbs", 1), chat.feedback(ids["r4"], "thumbs", 1),
                   chat.feedback(ids["r5"], "thumbs", -1)]
    for _ in range(2):   # a retry with the same feedback id: stored once
        chat.send({**WHY, "reply_id": ids["r5"]})
        ids["acks"].append(chat.recv_type("ack"))
    finalize_rewards(redis_url, server.prefix)
    ids["chat"], ids["session"] = chat, chat.session_id
    yield ids
    chat.close()


def test_edit_regenerate_select_make_branches_and_the_model_sees_the_branch(tree, server, rdb):
    p = server.prefix
    r1, r2, r3, r4, r5 = (tree[k] for k in ("r1", "r2", "r3", "r4", "r5"))
    assert reply(rdb, p, r1)["parent_id"] == "" and reply(rdb, p, r2)["parent_id"] == r1
    # the edit is a new message after r1: the model saw the first turn, never the old wording
    assert reply(rdb, p, r3)["parent_id"] == r1
    assert history_of(rdb, p, r3) == ["first question", tree["texts"]["r1"], "second question, edited"]
    # the regeneration is a sibling of r3 (same message, same parent) and saw the same history
    assert (reply(rdb, p, r4)["parent_id"], reply(rdb, p, r4)["client_msg_id"]) == (r1, reply(rdb, p, r3)["client_msg_id"])
    assert history_of(rdb, p, r4) == history_of(rdb, p, r3)
    assert tree["selected"]["branch"] == [r1, r3]
    # continued from r3 (selected with the arrows): its history is that branch, not r4's
    assert history_of(rdb, p, r5) == ["first question", tree["texts"]["r1"], "second question, edited",
                                      tree["texts"]["r3"], "third question"]
    assert rdb.lrange(Keys(p).session(tree["session"]), 0, -1) == [r1, r3, r5]


def test_every_reply_hash_the_server_writes_is_a_typed_record(tree, server, rdb):
    """The chat layer writes core/records.ReplyRecord.to_redis(): every stored field is one the
    record names and parses, so the learner, the archive and the devtools read it back whole."""
    for name in ("r1", "r2", "r3", "r4", "r5"):
        h = reply(rdb, server.prefix, tree[name])
        rec = ReplyRecord.from_redis(h)
        assert rec.extra == {}, f"{name}: fields the record does not name or parse: {rec.extra}"
        assert rec.to_redis() == h and rec.reply_id == tree[name]
        assert rec.finish_reason in {"stop", "length"} and len(rec.logprobs) == len(rec.token_ids) == rec.n_tokens


def test_choices_between_branches_are_signals(tree, server, rdb):
    p, chat = server.prefix, tree["chat"]
    assert [a["type"] for a in tree["acks"]] == ["ack"] * 5
    [edited] = events(rdb, p, kind="edited")
    assert (edited["reply_id"], edited["derived"], edited["session_id"]) == (tree["r2"], "1", tree["session"])
    [went_on] = events(rdb, p, kind="sibling", reply_id=tree["r3"])
    assert (went_on["value"], went_on["how"]) == (tree["r4"], "went on from it")
    [rated] = events(rdb, p, kind="sibling", reply_id=tree["r4"])   # r4 thumbed up: preferred over r3, once
    assert (rated["value"], rated["how"]) == (tree["r3"], "thumbed it up")
    # refused: a parent from elsewhere, an edit of a reply after another parent, select while unknown
    assert error_for(chat, {"type": "user_message", "text": "x", "client_msg_id": "bad1",
                            "parent_id": "rep_nope"})["code"] == "unknown_reply"
    assert error_for(chat, {"type": "user_message", "text": "x", "client_msg_id": "bad2", "parent_id": "",
                            "edit_of": tree["r5"]})["code"] == "bad_value"
    assert error_for(chat, {"type": "select", "reply_id": "rep_nope"})["code"] == "unknown_reply"


def test_signals_reach_the_ledger_as_named_components(tree, server, rdb, monkeypatch, capsys):
    k = Keys(server.prefix)
    comps = {r: json.loads(rdb.hget(k.reward(tree[r]), "components") or "{}") for r in ("r2", "r3", "r4")}
    assert comps["r2"].get("edited") == -0.5
    assert comps["r3"].get("sibling") == -0.5        # r4 was thumbed up after r3 was gone on from: last wins
    assert comps["r4"].get("sibling") == 0.5 and comps["r4"].get("thumbs") == 1.0
    pairs = {(f["chosen_id"], f["rejected_id"], f["source"]) for _, f in rdb.xrange(k.pairs)}
    assert (tree["r3"], tree["r4"], "sibling") in pairs and (tree["r4"], tree["r3"], "sibling") in pairs
    code, out, _ = cli(monkeypatch, capsys, server, "rewards", "show", tree["r2"])
    assert code == 0 and "edited" in out and "edited the question it answered" in out


def test_reason_tags_are_validated_stored_once_and_shown(tree, server, rdb, monkeypatch, capsys):
    p, chat, rid = server.prefix, tree["chat"], tree["r5"]
    assert [a["duplicate"] for a in tree["acks"][-2:]] == [False, True]
    [ev] = events(rdb, p, kind="reasons", reply_id=rid)
    assert json.loads(ev["tags"]) == ["inaccurate", "unsafe"] and ev["comment"] == "the year is wrong"
    for bad in ({"tags": ["nonsense"]}, {"tags": ["helpful", "inaccurate"]}, {"comment": "x" * 501}, {},
                {"kind": "thumbs", "value": 1, "tags": ["inaccurate"]}, {"kind": "copy", "tags": ["clear"]}):
        frame = {**WHY, "reply_id": rid, "feedback_id": f"bad-{len(str(bad))}", **bad}
        if not bad:
            del frame["tags"], frame["comment"]
        err = error_for(chat, frame)
        assert err["code"] in ("bad_value", "missing_field") and err["ref"].startswith("bad-"), err
    assert len(events(rdb, p, kind="reasons")) == 1
    comps = json.loads(rdb.hget(Keys(p).reward(rid), "components"))
    assert comps["tag_inaccurate"] == pytest.approx(-0.3) and comps["safety"] == -1.0
    code, out, _ = cli(monkeypatch, capsys, server, "rewards", "show", rid)
    assert code == 0 and "tag_inaccurate" in out and "reported it unsafe" in out and "the year is wrong" in out
    code, out, _ = cli(monkeypatch, capsys, server, "sessions", "show", tree["session"])
    assert code == 0 and "tags: inaccurate, unsafe" in out and '"the year is wrong"' in out
    code, out, _ = cli(monkeypatch, capsys, server, "sessions", "export", "--format", "feedback", "--user", "alice",
                       "-o", "-")
    rows = [json.loads(line) for line in out.splitlines()]
    [row] = [r for r in rows if r["kind"] == "reasons"]
    assert row["schema"] == "rewardloop.feedback/1" and row["tags"] == ["inaccurate", "unsafe"]
    assert row["reply_id"] == rid and row["comment"] == "the year is wrong"
    assert {r["kind"] for r in rows} >= {"thumbs", "reasons", "edited", "sibling", "regenerate"}
    # operators: counts by tag per version, on /ops and /metrics (the ops monitor folds the events)
    from worker.ops.monitor import fold
    from worker.ops.store import OpsStore
    fold(OpsStore(rdb, Keys(p)), time.time())
    state = http("GET", server.url + "/ops/api/state?minutes=30", token=ADMIN)[1]
    assert state["tags"]["base"] == {"inaccurate": 1, "unsafe": 1}
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    assert 'rewardloop_feedback_tags_total{adapter_version="base",tag="unsafe"} 1.0' in text
    view = urllib.request.Request(f"{server.url}/admin/sessions/{tree['session']}/view",
                                  headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(view, timeout=30) as resp:   # the operator's session view
        html = resp.read().decode()
    assert "inaccurate, unsafe" in html and "the year is wrong" in html


def test_the_sessions_api_is_per_user(tree, server, rdb):
    token, url = server.token("alice"), server.url + "/api/sessions"
    other = Chat(server, server.token("alice"))
    send(other, "a question about Parquet files", parent_id="")
    other.close()
    status, body = http("GET", url, token=token)
    assert status == 200
    listed = body["sessions"]
    assert [s["session_id"] for s in listed[:2]] == [other.session_id, tree["session"]]   # newest activity first
    mine = next(s for s in listed if s["session_id"] == tree["session"])
    assert mine["title"] == "first question" and mine["replies"] == 5 and mine["turns"] == 3
    assert [s["session_id"] for s in http("GET", url + "?q=PARQUET", token=token)[1]["sessions"]] == [other.session_id]
    assert [s["session_id"] for s in http("GET", url + "?q=edited", token=token)[1]["sessions"]] == [tree["session"]]

    status, conv = http("GET", f"{url}/{tree['session']}", token=token)
    assert status == 200 and conv["branch"] == [tree["r1"], tree["r3"], tree["r5"]]
    by_id = {r["reply_id"]: r for r in conv["replies"]}
    assert set(by_id) == {tree[k] for k in ("r1", "r2", "r3", "r4", "r5")}
    assert by_id[tree["r4"]]["parent_id"] == tree["r1"] and by_id[tree["r4"]]["adapter_version"] == "base"
    assert by_id[tree["r4"]]["feedback"]["thumbs"] == 1
    assert by_id[tree["r5"]]["feedback"] == {"thumbs": -1, "reasons": {"tags": ["inaccurate", "unsafe"],
                                                                       "comment": "the year is wrong"}}

    assert http("PATCH", f"{url}/{tree['session']}", {"title": "  Branches   demo "}, token=token) == \
        (200, {"session_id": tree["session"], "title": "Branches demo"})
    assert http("PATCH", f"{url}/{tree['session']}", {"title": "x" * 121}, token=token)[0] == 400
    # someone else, or no one: 404 on every route, and nothing changed
    bob = server.token("bob")
    for method, body in (("GET", None), ("PATCH", {"title": "mine now"}), ("DELETE", None)):
        assert http(method, f"{url}/{tree['session']}", body, token=bob)[0] == 404
        assert http(method, f"{url}/s_doesnotexist", body, token=token)[0] == 404
    assert http("GET", url, token=bob)[1]["sessions"] == []
    assert http("GET", url)[0] == 401
    assert http("GET", f"{url}/{tree['session']}", token=token)[1]["title"] == "Branches demo"


def test_deleting_a_conversation_forgets_it(server, redis_url, rdb, monkeypatch, capsys):
    from learner.config import GateSettings, TrainConfig
    from learner.dataset import build_dataset
    from worker.rewards.config import RewardConfig
    p, k, token = server.prefix, Keys(server.prefix), server.token("carla")
    chat = Chat(server, token)
    gone = send(chat, "delete me later", parent_id="")["start"]["reply_id"]
    assert chat.feedback(gone, "thumbs", 1)["type"] == "ack"
    chat.close()
    keep_chat = Chat(server, token)
    kept = send(keep_chat, "keep me", parent_id="")["start"]["reply_id"]
    assert keep_chat.feedback(kept, "thumbs", 1)["type"] == "ack"
    keep_chat.close()
    finalize_rewards(redis_url, p)

    def training_ids():
        ds = build_dataset(rdb, k, TrainConfig(gate=GateSettings(holdout_share=0.0)), RewardConfig(max_user_share=1.0), newest_version=0)
        return {s.reply_id for s in ds.train + ds.holdout}
    assert {gone, kept} <= training_ids()

    status, body = http("DELETE", f"{server.url}/api/sessions/{chat.session_id}", token=token)
    assert status == 200 and body["deleted"] is True and "training" in body["message"]
    assert http("GET", f"{server.url}/api/sessions/{chat.session_id}", token=token)[0] == 404
    assert [s["session_id"] for s in http("GET", server.url + "/api/sessions", token=token)[1]["sessions"]] == \
        [keep_chat.session_id]
    ids = training_ids()
    assert gone not in ids and kept in ids
    code, out, _ = cli(monkeypatch, capsys, server, "sessions", "export", "--user", "carla", "-o", "-")
    exported = [json.loads(line) for line in out.splitlines()]
    assert [s["session_id"] for s in exported] == [keep_chat.session_id]
    assert not [key for key in rdb.scan_iter(match=p + "*") if gone in key or chat.session_id in key]
    assert not [e for _, e in rdb.xrange(k.events) if gone in e.values() or chat.session_id in e.values()]
    assert rdb.zscore(k.deleted_sessions, chat.session_id) is not None
    code, _, err = cli(monkeypatch, capsys, server, "replay", chat.session_id, "--reward-config", "/dev/null")
    assert code == 1 and "no session" in err
