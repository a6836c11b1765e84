"""`rewardloop sessions list|show|export`, the admin session endpoints, opt-out and
`rewardloop users forget`: a real tiny-model server, real Redis, the real reward pipeline."""
from __future__ import annotations

import json
import urllib.request

import pytest

from core.keys import Keys
from tests.support.clients import Chat, http
from tests.support.devtools import cli, cli_json, finalize_rewards
from tests.support.processes import ADMIN

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def logged(server, redis_url):
    """alice: thumbs up, thumbs down, a choice between two candidates; bob opts out."""
    chat = Chat(server, server.token("alice"))
    a = chat.ask("hello")
    assert chat.feedback(a["start"]["reply_id"], "thumbs", 1)["type"] == "ack"
    b = chat.ask("Say something")
    assert chat.feedback(b["start"]["reply_id"], "thumbs", -1)["type"] == "ack"
    c1 = chat.ask("show me", candidates=2)
    c2 = chat.collect()
    assert chat.feedback(c1["start"]["reply_id"], "choose", c2["start"]["reply_id"])["type"] == "ack"
    chat.close()
    bob = Chat(server, server.token("bob"))
    d = bob.ask("hi there")
    assert bob.feedback(d["start"]["reply_id"], "thumbs", 1)["type"] == "ack"
    bob.close()
    assert http("POST", server.url + "/api/opt-out", {}, token=server.token("bob")) == \
        (200, {"user_id": "bob", "opt_out": True})
    assert http("POST", server.url + "/api/opt-out", {})[0] == 401
    from service.serving.auth import create_token
    from tests.support.processes import SECRET
    olga = Chat(server, create_token(SECRET, "olga", 3600, opt_out=True))  # opted out with her token
    e = olga.ask("test")
    assert olga.feedback(e["start"]["reply_id"], "thumbs", 1)["type"] == "ack"
    olga.close()
    finalize_rewards(redis_url, server.prefix)
    return {"alice": chat.session_id, "bob": bob.session_id, "olga": olga.session_id,
            "a": a, "b": b, "c1": c1, "c2": c2, "d": d}


def test_list_and_show(logged, server, monkeypatch, capsys):
    rows = cli_json(monkeypatch, capsys, server, "sessions", "list", "--json")
    by_id = {r["session_id"]: r for r in rows}
    alice = by_id[logged["alice"]]
    assert (alice["user_id"], alice["turns"], alice["replies"], alice["adapters"]) == ("alice", 3, 4, ["base"])
    assert by_id[logged["bob"]]["excluded"] == "opted out" and by_id[logged["olga"]]["excluded"] == "opted out"
    assert [r["session_id"] for r in cli_json(monkeypatch, capsys, server, "sessions", "list", "--user", "bob",
                                              "--json")] == [logged["bob"]]
    assert cli_json(monkeypatch, capsys, server, "sessions", "list", "--adapter", "v7", "--json") == []
    assert cli_json(monkeypatch, capsys, server, "sessions", "list", "--since", "1h", "--min-reward", "5",
                    "--json") == []
    code, table, _ = cli(monkeypatch, capsys, server, "sessions", "list")
    assert code == 0 and logged["alice"] in table and "opted out" in table

    detail = cli_json(monkeypatch, capsys, server, "sessions", "show", logged["alice"], "--json")
    replies = {r["reply_id"]: r for r in detail["replies"]}
    a = replies[logged["a"]["start"]["reply_id"]]
    assert a["user_text"] == "hello" and a["text"] == logged["a"]["text"] and a["adapter_version"] == "base"
    assert [(e["kind"], e["value"]) for e in a["events"] if not e["derived"]] == [("thumbs", 1)]
    assert a["reward"]["state"] == "rewarded" and a["reward"]["components"]["thumbs"] == 1.0
    assert a["reward"]["reward"] > 0 and "token_ids" not in a
    c2 = replies[logged["c2"]["start"]["reply_id"]]
    assert not c2["in_history"] and c2["reward"]["components"]["choose"] == -1.0
    code, text, _ = cli(monkeypatch, capsys, server, "sessions", "show", logged["b"]["start"]["reply_id"])
    assert code == 0 and "thumbs -1" in text and "Say something" in text
    assert cli(monkeypatch, capsys, server, "sessions", "show", "s_nope")[0] == 1


def test_export_formats_load_with_datasets(logged, server, monkeypatch, capsys, tmp_path):
    from datasets import load_dataset

    def export(fmt, *extra):
        path = tmp_path / f"{fmt}.jsonl"
        code, _, err = cli(monkeypatch, capsys, server, "sessions", "export", "--format", fmt, "-o", str(path), *extra)
        assert code == 0, err
        return load_dataset("json", data_files=str(path), split="train")

    raw = export("jsonl")
    assert list(raw["session_id"]) == [logged["alice"]]  # bob opted out by API, olga by token
    assert len(raw[0]["replies"]) == 4 and raw[0]["replies"][0]["token_ids"]

    sft = export("sft")
    assert sft.column_names == ["messages"] and len(sft) == 3  # the kept replies; c2 was not chosen
    texts = [row["messages"][-1] for row in sft]
    assert {"role": "assistant", "content": logged["a"]["text"]} in texts
    first = next(r for r in sft if r["messages"][-1]["content"] == logged["a"]["text"])["messages"]
    assert first[0]["role"] == "system" and first[1] == {"role": "user", "content": "hello"}

    kto = export("kto")
    assert sorted(kto.column_names) == ["completion", "label", "prompt"]
    labels = {row["completion"][0]["content"]: row["label"] for row in kto}
    assert labels[logged["a"]["text"]] is True and labels[logged["b"]["text"]] is False
    assert labels[logged["c1"]["text"]] is True and labels[logged["c2"]["text"]] is False

    dpo = export("dpo")
    assert sorted(dpo.column_names) == ["chosen", "prompt", "rejected"] and len(dpo) == 1
    assert dpo[0]["chosen"] == [{"role": "assistant", "content": logged["c1"]["text"]}]
    assert dpo[0]["rejected"] == [{"role": "assistant", "content": logged["c2"]["text"]}]
    assert dpo[0]["prompt"][-1] == {"role": "user", "content": "show me"}

    meta = export("sft", "--meta", "--reply-min-reward", "0")
    assert set(meta["reward"]) and all(r >= 0 for r in meta["reward"]) and set(meta["session_id"]) == {logged["alice"]}


def _admin(url: str) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read().decode()


def test_admin_endpoints(logged, server, monkeypatch, capsys):
    assert http("GET", server.url + "/admin/sessions")[0] == 401
    status, body = http("GET", server.url + "/admin/sessions?user=alice&since=1h", token=ADMIN)
    assert status == 200 and [s["session_id"] for s in body["sessions"]] == [logged["alice"]]
    assert http("GET", server.url + "/admin/sessions?since=yesterdayish", token=ADMIN)[0] == 400
    status, detail = http("GET", f"{server.url}/admin/sessions/{logged['alice']}", token=ADMIN)
    assert status == 200
    assert detail == cli_json(monkeypatch, capsys, server, "sessions", "show", logged["alice"], "--json")
    assert http("GET", server.url + "/admin/sessions/s_nope", token=ADMIN)[0] == 404
    status, page = _admin(f"{server.url}/admin/sessions/{logged['alice']}/view")
    assert status == 200 and "<table>" in page and "hello" in page
    assert "<script>" not in page.split("<style>")[0] + page.split("</style>")[1]


def test_html_view_escapes_model_text():
    from service.devtools.session_html import session_page
    evil = "<script>alert(1)</script>"
    page = session_page({"session_id": "s_1", "user_id": "u", "created": 0, "last_active": 0, "turns": 1,
                         "replies": [{"reply_id": "rep_1", "turn": 0, "user_text": evil, "text": evil,
                                      "in_history": True, "events": [], "reward": None}],
                         "adapters": [], "mean_reward": None, "excluded": None})
    assert evil not in page and "&lt;script&gt;" in page


def _keys_of(rdb, prefix: str) -> dict[str, str]:
    return {k: rdb.type(k) for k in rdb.scan_iter(match=prefix + "*")}


def _stream_dump(rdb, prefix: str) -> dict[str, list]:
    return {s: rdb.xrange(prefix + s) for s in ("events", "rewards", "pairs")}


def test_forget_removes_everything_of_the_user_and_nothing_else(server_factory, redis_url, rdb, prefix,
                                                                monkeypatch, capsys):
    srv = server_factory(prefix=prefix)
    ids = {}
    for user in ("dora", "carol"):
        chat = Chat(srv, srv.token(user))
        r1 = chat.ask("hello")["start"]["reply_id"]
        chat.feedback(r1, "thumbs", 1)
        chat.feedback(r1, "copy")
        r2 = chat.ask("show me", candidates=2)["start"]["reply_id"]
        r3 = chat.collect()["start"]["reply_id"]
        chat.feedback(r2, "choose", r3)
        ids[user] = {chat.session_id, r1, r2, r3}
        chat.close()
    finalize_rewards(redis_url, prefix)
    before_keys, before_streams = _keys_of(rdb, prefix), _stream_dump(rdb, prefix)
    carol = ids["carol"] | {"carol"}
    assert any(any(i in k for i in carol) for k in before_keys)  # there was something to forget

    code, out, err = cli(monkeypatch, capsys, srv, "users", "forget", "carol", "--yes")
    assert code == 0, err
    report = json.loads(out)
    assert report["sessions"] == 1 and report["replies"] == 3 and report["stream_entries"]["events"] > 0

    after_keys, after_streams = _keys_of(rdb, prefix), _stream_dump(rdb, prefix)
    leftovers = [k for k in after_keys if any(i in k for i in carol)]
    assert leftovers == [Keys(prefix).user("carol")]  # the tombstone
    assert set(rdb.hgetall(Keys(prefix).user("carol"))) == {"forgotten"}
    assert rdb.zscore(Keys(prefix).forgotten_users, "carol") is not None
    for name, entries in after_streams.items():
        assert not [e for e in entries if any(v in carol for v in e[1].values())], name
        kept = [e for e in before_streams[name] if not any(v in carol for v in e[1].values())]
        assert entries == kept, f"{name}: someone else's entries changed"
    assert not [m for m in rdb.zrange(Keys(prefix).sessions, 0, -1) if m in carol]
    # dora's keys all survive, with the same content types
    dora = {k: t for k, t in before_keys.items() if not any(i in k for i in carol)}
    assert {k: after_keys.get(k) for k in dora} == dora
    from learner.dataset import excluded_users
    assert excluded_users(rdb, Keys(prefix), ["carol", "dora"]) == {"carol"}
    # later data from a forgotten user is never exported
    chat = Chat(srv, srv.token("carol"))
    chat.ask("hello again")
    chat.close()
    code, out, _ = cli(monkeypatch, capsys, srv, "sessions", "export", "-o", "-")
    assert code == 0 and {json.loads(line)["user_id"] for line in out.splitlines()} == {"dora"}


def test_help_on_every_new_command(monkeypatch, capsys, server):
    for argv in (["sessions"], ["sessions", "list"], ["sessions", "show"], ["sessions", "export"], ["replay"],
                 ["evaluate"], ["users"], ["users", "forget"], ["users", "opt-out"]):
        code, out, _ = cli(monkeypatch, capsys, server, *argv, "--help")
        assert code == 0 and "usage: rewardloop " + " ".join(argv) in out, argv
