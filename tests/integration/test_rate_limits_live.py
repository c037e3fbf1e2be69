"""Rate limits under gunicorn: two worker processes count against one budget in Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.live_server import LiveServer, last_line

pytestmark = pytest.mark.integration

LIMIT = 4


@pytest.fixture
def live_server(pg_database_url: str, redis_db_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(
        tmp_path / "live-server",
        database_url=pg_database_url,
        redis_url=redis_db_url,
        extra_settings={"AAMI_REGISTER_RATE_LIMIT": f"{LIMIT}/1h"},
    )
    try:
        server.start()
        yield server
    finally:
        server.close()
    assert not server.leftovers


def test_registration_budget_is_shared_by_every_worker(live_server):
    token = last_line(live_server.cli("token", "create", "--name", "fleet"))
    first, second = live_server.worker_pids()
    on_first = live_server.session_on_worker(first)
    on_second = live_server.session_on_worker(second)
    url = live_server.api("bootstrap-tokens/register")
    body = {"token": token, "hostname": "web"}
    statuses = [on_first.post(url, json=body, timeout=30).status_code for _ in range(LIMIT // 2)]
    statuses += [on_second.post(url, json=body, timeout=30).status_code for _ in range(LIMIT // 2)]
    assert statuses == [201] * LIMIT
    # Half the budget was spent in each process: each refuses now.
    for session in (on_first, on_second):
        refused = session.post(url, json=body, timeout=30)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 3600
