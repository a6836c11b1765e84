"""The archive's file layer on plain data: atomic writes, the layout readers and DuckDB expect,
newest copy wins, and any fsspec URL (here fsspec's in-memory filesystem) works like a folder."""
from __future__ import annotations

import secrets

import pytest

from core.archive import Archive, new_batch
from core.records import ReplyRecord


def _rows(n: int, text: str = "x") -> list[ReplyRecord]:
    return [ReplyRecord(reply_id=f"r{i}", user_id="u", session_id="s", text=text, token_ids=[1, 2, i],
                        logprobs=[-0.5, -1.25, -3.0]) for i in range(n)]


@pytest.mark.parametrize("where", ["folder", "memory"])
def test_write_list_read_and_remove(where, tmp_path):
    url = str(tmp_path / "a") if where == "folder" else f"memory://rl-{secrets.token_hex(4)}"
    archive = Archive(url)
    first = archive.write(ReplyRecord, _rows(3, "old"), day="2026-01-02", rated=False, batch=new_batch())
    archive.write(ReplyRecord, _rows(2, "new"), day="2026-01-02", rated=True, batch=new_batch())
    files = archive.files("replies")
    assert [(f.day, f.rated) for f in files] == [("2026-01-02", False), ("2026-01-02", True)]
    assert first.path.endswith(f"replies/day=2026-01-02/rated=0/{first.batch}.parquet") and first.size > 0
    got = archive.records(ReplyRecord)
    assert {k: v.text for k, v in got.items()} == {"r0": "new", "r1": "new", "r2": "old"}  # newest copy wins
    assert got["r2"].logprobs == [-0.5, -1.25, -3.0] and got["r2"].token_ids == [1, 2, 2]
    archive.remove([first])
    assert [f.rated for f in archive.files("replies")] == [True] and archive.days("replies") == ["2026-01-02"]


def test_a_write_that_fails_before_the_rename_leaves_nothing_readable(tmp_path):
    def power_cut(point):
        if point == "before_rename":
            raise OSError("no space left on device")
    archive = Archive(tmp_path / "a", hook=power_cut)
    with pytest.raises(OSError):
        archive.write(ReplyRecord, _rows(2), day="2026-01-02", rated=False, batch=new_batch())
    assert archive.files("replies") == [] and list((tmp_path / "a").rglob("*.tmp")) == []
