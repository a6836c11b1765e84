"""Registry pointers, history and notices (real Redis, a stand-in adapter folder: no model)."""
from __future__ import annotations

import json
import time

import pytest

from core.adapter_format import sha256_file
from core.manifest import AdapterManifest
from core.registry import Registry, RegistryError
from learner.runner import LearnerLock
from service.cli import main as cli

pytestmark = pytest.mark.integration


class FakeModel:
    """Writes the two files a PEFT folder has; enough for the registry."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def save_pretrained(self, folder: str) -> None:
        with open(f"{folder}/adapter_model.safetensors", "wb") as fh:
            fh.write(self.payload)
        with open(f"{folder}/adapter_config.json", "w") as fh:
            fh.write("{}")


def publish(reg: Registry, r, keys, state="published", mode="canary", share=0.2) -> AdapterManifest:
    lock = LearnerLock(r, keys, ttl_s=10)
    assert lock.acquire()
    try:
        version = reg.state()["next_version"] + 1
        manifest = AdapterManifest(version=version, parent=reg.state()["stable"], base_model="test/model", state=state,
                                   created=time.time(), reason="" if state == "published" else "test says no",
                                   samples_used=3)
        staged = reg.stage(FakeModel(f"weights {version}".encode()), manifest)
        ok, why = reg.commit(staged, reg.manifest_of(staged), lock.token, mode if state == "published" else "reject",
                             share, cursor=f"{version}-0", pairs_cursor=None, by="test")
        assert ok, why
        return reg.manifest(version)
    finally:
        lock.release()


@pytest.fixture
def reg(rdb, keys, tmp_path):
    return Registry(rdb, keys, tmp_path)


def test_publish_canary_then_promote_then_rollback(reg, rdb, keys):
    sub = rdb.pubsub()
    sub.subscribe(keys.adapters_changed)
    sub.get_message(timeout=1)  # the subscribe confirmation

    m1 = publish(reg, rdb, keys, mode="stable")
    assert m1.sha256 == sha256_file(reg.version_dir(1) / "adapter_model.safetensors")
    m2 = publish(reg, rdb, keys, mode="canary", share=0.2)
    assert m2.parent == "1"
    st = reg.state()
    assert (st["stable"], st["canary"], st["canary_share"]) == ("1", "2", 0.2)
    assert rdb.get(keys.learn_cursor) == "2-0"

    reg.move("promote", "2", by="ops", reason="looks good")
    st = reg.state()
    assert (st["stable"], st["canary"], st["rollback_target"]) == ("2", "", "1")
    reg.move("rollback", None, by="ops", reason="drift")
    assert reg.state()["stable"] == "1"
    reg.move("rollback", "base", by="ops", reason="all off")
    assert reg.state()["stable"] == "base"

    notices = []
    while (msg := sub.get_message(timeout=1)) is not None:
        notices.append(json.loads(msg["data"]))
    sub.close()
    assert [(n["event"], n["stable"]) for n in notices] == [
        ("publish", "1"), ("publish", "1"), ("promote", "2"), ("rollback", "1"), ("rollback", "base")]
    history = reg.history()
    assert [h["event"] for h in history][::-1] == ["publish", "publish", "promote", "rollback", "rollback"]
    assert history[0]["by"] == "ops" and history[0]["reason"] == "all off"


def test_rollback_without_version_drops_a_canary_first(reg, rdb, keys):
    publish(reg, rdb, keys, mode="stable")
    publish(reg, rdb, keys, mode="canary")
    reg.move("rollback", None, by="ops", reason="canary is bad")
    st = reg.state()
    assert (st["stable"], st["canary"]) == ("1", "")


def test_rejected_or_unknown_versions_cannot_serve(reg, rdb, keys):
    m = publish(reg, rdb, keys, state="rejected")
    assert m.state == "rejected" and reg.state()["stable"] == "base"
    with pytest.raises(RegistryError, match="rejected"):
        reg.move("promote", "1", by="ops", reason="")
    with pytest.raises(RegistryError, match="does not exist"):
        reg.move("rollback", "9", by="ops", reason="")


def test_commit_without_the_lock_changes_nothing(reg, rdb, keys):
    staged = reg.stage(FakeModel(b"w"), AdapterManifest(version=1, parent="base", base_model="test/model",
                                                        state="published", created=time.time()))
    ok, why = reg.commit(staged, reg.manifest_of(staged), "not-the-token", "stable", 0.1, cursor="1-0", pairs_cursor=None,
                         by="test")
    assert not ok and "lock" in why
    assert not rdb.exists(keys.adapters) and rdb.get(keys.learn_cursor) is None
    assert list(reg.root.iterdir()) == []


def test_orphan_folders_are_cleaned(reg, rdb, keys):
    publish(reg, rdb, keys, mode="stable")
    (reg.root / "v2").mkdir()  # renamed, then killed before the commit
    (reg.root / ".tmp-abc").mkdir()
    assert sorted(reg.clean_orphans()) == [".tmp-abc", "v2"]
    assert sorted(p.name for p in reg.root.iterdir()) == ["v1"]


def test_cli_adapters_list_show_promote(reg, rdb, keys, redis_url, prefix, tmp_path, monkeypatch, capsys):
    publish(reg, rdb, keys, mode="canary")
    monkeypatch.setenv("REWARDLOOP_REDIS_URL", redis_url)
    monkeypatch.setenv("REWARDLOOP_PREFIX", prefix)
    monkeypatch.setenv("REWARDLOOP_DATA_DIR", str(tmp_path))
    assert cli.main(["adapters", "list"]) == 0
    out = capsys.readouterr().out
    assert "stable base" in out and "canary 1" in out and "published" in out
    assert cli.main(["adapters", "show", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert cli.main(["adapters", "promote", "1", "--reason", "ok"]) == 0
    assert reg.state()["stable"] == "1"
    assert cli.main(["adapters", "promote", "7"]) == 1
    assert "does not exist" in capsys.readouterr().err
