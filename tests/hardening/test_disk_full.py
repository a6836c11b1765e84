"""The data dir's disk fills up while the learner publishes an adapter (a real, too-small
tmpfs mounted on the data dir; skipped where mounting is not allowed), and an adapter file is
corrupted on disk after publishing: the registry stays consistent, the server keeps serving
the version it has, each refusal leaves a clear log line, and a later publish succeeds."""
from __future__ import annotations

import errno
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
import redis

from core.adapter_format import WEIGHTS_FILE, sha256_file
from core.keys import Keys
from core.registry import Registry
from tests.support.clients import Chat, http
from tests.support.models import publish_adapter, save_random_adapter
from tests.support.processes import ADMIN
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
TINY_ID = "rewardloop/tiny-random-llama"


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs on tmp_path/data; yields (folder, resize(bytes))."""
    mnt = tmp_path / "data"
    mnt.mkdir()
    def mount(*opts):
        return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(opts), "tmpfs", str(mnt)],
                              capture_output=True, text=True)
    if os.geteuid() != 0 or mount("size=64m").returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): the disk-full test needs one")

    def resize(size: int) -> None:
        done = mount("remount", f"size={size}")
        assert done.returncode == 0, done.stderr
    try:
        yield mnt, resize
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _stable(srv) -> str:
    code, body = http("GET", srv.url + "/admin/adapters", token=ADMIN)
    assert code == 200, body
    return body["server"]["routing"]["stable"]


def _consistent(reg: Registry) -> None:
    """Every version Redis knows has its folder with the recorded checksum; no temp folders."""
    versions = reg.state()["versions"]
    for v, entry in versions.items():
        assert sha256_file(Path(entry["path"]) / WEIGHTS_FILE) == entry["sha256"], v
    assert sorted(p.name for p in reg.root.iterdir()) == sorted(f"v{v}" for v in versions)


def test_disk_full_while_publishing_and_a_corrupted_adapter(small_disk, server_factory, redis_url, models_dir,
                                                            tmp_path, caplog):
    data, resize = small_disk
    alpha = save_random_adapter(models_dir, tmp_path / "alpha", seed=1)
    beta = save_random_adapter(models_dir, tmp_path / "beta", seed=2)
    size = (alpha / WEIGHTS_FILE).stat().st_size
    prefix = f"df{time.monotonic_ns() % 10 ** 8}:"
    srv = server_factory(prefix, REWARDLOOP_DATA_DIR=data, REWARDLOOP_TEMPERATURE=0)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    reg = Registry(r, Keys(prefix), data)

    v1 = publish_adapter(redis_url, prefix, data, alpha, TINY_ID)
    wait_for(lambda: _stable(srv) == v1, 60, f"stable {v1}", srv)
    resize(int(size * 1.5))     # v1 fits, a second adapter does not
    used = os.statvfs(data)
    print(f"\nadapter {size} B; tmpfs {used.f_blocks * used.f_frsize} B, free {used.f_bavail * used.f_frsize} B")

    before = reg.state()
    with caplog.at_level(logging.ERROR, logger="core.registry"), pytest.raises(OSError) as err:
        publish_adapter(redis_url, prefix, data, beta, TINY_ID)
    assert err.value.errno == errno.ENOSPC
    assert any("disk full" in rec.getMessage() and "nothing was published" in rec.getMessage()
               for rec in caplog.records), [rec.getMessage() for rec in caplog.records]
    assert reg.state() == before                 # Redis unchanged, no version number taken
    _consistent(reg)                             # the half-written folder is gone
    assert Chat(srv, srv.token("dana")).ask("hello")["start"]["adapter_version"] == v1

    resize(64 * 2 ** 20)                         # space again: the next publish goes through
    v2 = publish_adapter(redis_url, prefix, data, beta, TINY_ID)
    wait_for(lambda: _stable(srv) == v2, 60, f"stable {v2}", srv)
    _consistent(reg)
    assert Chat(srv, srv.token("dana")).ask("hello")["start"]["adapter_version"] == v2

    # an adapter whose weights were corrupted on disk after the checksum was taken: refused
    # with one clear log line, v2 serves on (two servers and more kinds: tests/service/serving/test_hotswap.py)
    def corrupt(folder: Path):
        weights = bytearray((folder / WEIGHTS_FILE).read_bytes())
        weights[-10] ^= 0xFF
        (folder / WEIGHTS_FILE).write_bytes(bytes(weights))
    v3 = publish_adapter(redis_url, prefix, data, alpha, TINY_ID, tamper=corrupt)
    line = f"adapter {v3} refused"
    wait_for(lambda: line in srv.log_path.read_text(), 60, "the refusal log line", srv)
    refusal = next(x for x in srv.log_path.read_text().splitlines() if line in x)
    assert "checksum" in refusal and "serving goes on" in refusal, refusal
    assert _stable(srv) == v2
    assert Chat(srv, srv.token("dana")).ask("hello")["start"]["adapter_version"] == v2
    print(refusal.strip())
