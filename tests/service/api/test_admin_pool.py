"""Operator requests share one Redis pool per server process (they built a new pool per
request once, and never closed it: a connection leaked with every admin call)."""
from __future__ import annotations

import pytest
import redis

from tests.support.clients import http
from tests.support.processes import ADMIN

pytestmark = pytest.mark.integration


def test_admin_requests_reuse_one_connection(server, redis_url):
    for _ in range(25):
        code, body = http("GET", server.url + "/admin/adapters", token=ADMIN)
        assert code == 200, body
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        names = [c["name"] for c in r.client_list() if c["name"] == f"rewardloop-admin-{server.proc.pid}"]
    finally:
        r.close()
    assert len(names) == 1, names  # 25 sequential requests, one pooled connection
