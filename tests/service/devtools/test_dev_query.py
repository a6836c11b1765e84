"""`rewardloop sessions query` (DuckDB over the archive and the hot window) runs every documented
example; `rewardloop archive status|run` and `users forget` reach the archive. CLI in-process,
real Redis, a real archive folder."""
from __future__ import annotations

import json
import re
import time

import pytest

from core.keys import Keys
from tests.support.archive import consume_events, files_containing, log_session, xadd_at
from tests.support.processes import REPO

pytestmark = pytest.mark.integration


@pytest.fixture
def run_cli(monkeypatch, capsys, redis_url, prefix, tmp_path):
    env = {"REWARDLOOP_REDIS_URL": redis_url, "REWARDLOOP_PREFIX": prefix, "REWARDLOOP_DATA_DIR": str(tmp_path),
           "REWARDLOOP_HOT_SESSION_IDLE_S": "3600", "REWARDLOOP_HOT_STREAM_S": "600"}

    def run(*argv: str) -> tuple[int, str, str]:
        from service.cli import main as service_cli
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        code = service_cli.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def _feedback(rdb, keys, logged, kind: str, value, at: float, **extra) -> None:
    rep = logged.replies[0]
    xadd_at(rdb, keys.events, {"event_id": f"ev_{kind}{at}", "kind": kind, "value": json.dumps(value),
                               "reply_id": rep.reply_id, "session_id": rep.session_id, "user_id": rep.user_id,
                               "adapter_version": rep.adapter_version, "server_time": repr(at), **extra}, at)


def test_the_documented_examples_run_over_archive_and_hot_window(rdb, prefix, run_cli):
    from service.devtools.query import EXAMPLES
    keys = Keys(prefix)
    old, new = time.time() - 3 * 3600, time.time()
    archived = log_session(rdb, keys, user="ann", at=old)
    _feedback(rdb, keys, archived, "dwell", 12_000, old + 2)
    _feedback(rdb, keys, archived, "reasons", None, old + 3, tags=json.dumps(["clear", "helpful"]))
    hot = log_session(rdb, keys, user="bob", at=new, thumbs=-1, version="2")
    _feedback(rdb, keys, hot, "dwell", 3_000, new + 2)
    _feedback(rdb, keys, hot, "reasons", None, new + 3, tags=json.dumps(["clear"]))
    consume_events(rdb, keys)
    code, out, _ = run_cli("archive", "run", "--json")
    assert code == 0 and json.loads(out)["moved"]["sessions"] == 1  # ann's session is archived, bob's is hot

    def query(name: str) -> list[dict]:
        code, out, err = run_cli("sessions", "query", EXAMPLES[name], "--json")
        assert code == 0, err
        return json.loads(out)
    by_version = {r["adapter_version"]: r for r in query("reward by version and day")}
    assert by_version["base"]["replies"] == 2 and by_version["base"]["mean_reward"] == 1.0
    assert by_version["2"]["replies"] == 2 and by_version["2"]["mean_reward"] == -1.0
    kinds = {r["kind"]: r["events"] for r in query("feedback by kind")}
    assert kinds == {"thumbs": 4, "dwell": 2, "reasons": 2}
    assert {r["tag"]: r["times"] for r in query("feedback tags")} == {"clear": 2, "helpful": 1}
    dwell = {r["adapter_version"]: r["median_s"] for r in query("dwell distribution")}
    assert dwell == {"base": 12.0, "2": 3.0}
    assert sum(r["replies"] for r in query("replies and tokens per day")) == 4
    code, table, _ = run_cli("sessions", "query", "feedback tags")  # an example by name, as a table
    assert code == 0 and "clear" in table.splitlines()[1]
    code, _, err = run_cli("sessions", "query", "SELECT nope FROM replies")
    assert code == 2 and "nope" in err
    docs = (REPO / "docs" / "developers.md").read_text()
    missing = [name for name, sql in EXAMPLES.items() if re.sub(r"\s+", " ", sql) not in re.sub(r"\s+", " ", docs)]
    assert missing == [], f"docs/developers.md lacks the examples {missing}"


def test_archive_status_and_forget_through_the_cli(rdb, prefix, run_cli, tmp_path):
    keys = Keys(prefix)
    secret = "the code is 0451"
    gone = log_session(rdb, keys, user="leaver", at=time.time() - 3 * 3600, text=secret)
    consume_events(rdb, keys)
    code, out, _ = run_cli("archive", "status")
    assert code == 0 and "no run yet" in out
    assert run_cli("archive", "run")[0] == 0
    code, out, _ = run_cli("archive", "status")
    assert code == 0 and "archive        ok" in out and re.search(r"replies\s+1 files", out)
    assert files_containing(tmp_path / "archive", secret)
    assert not rdb.exists(keys.reward(gone.replies[0].reply_id))
    code, out, _ = run_cli("rewards", "show", gone.replies[0].reply_id)  # explained from the archive
    assert code == 0 and "state rewarded" in out and "thumbs" in out
    code, out, _ = run_cli("users", "forget", "leaver", "--yes")
    report = json.loads(out)
    assert code == 0 and report["archive"]["applied"] and report["archive"]["files_rewritten"] >= 3
    assert files_containing(tmp_path / "archive", secret) == []
    code, out, _ = run_cli("sessions", "show", gone.session.session_id)
    assert code == 1
    code, out, _ = run_cli("sessions", "query", "SELECT count(*) AS n FROM replies", "--json")
    assert json.loads(out) == [{"n": 0}]
