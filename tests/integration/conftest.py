"""Fixtures for the config-server's integration tests: a live ``aami-server serve``.

The server runs on this test's own PostgreSQL database and Redis logical db (see
tests/conftest.py), so tests cannot see each other's targets, tokens or pub/sub traffic.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.integration.live_server import LiveServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: builds and installs the project (minutes on a cold pip cache)"
    )


@pytest.fixture
def live_server(pg_database_url: str, redis_db_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    """``aami-server serve --workers 2`` on a migrated PostgreSQL database and Redis."""
    server = LiveServer(tmp_path / "live-server", database_url=pg_database_url,
                        redis_url=redis_db_url)
    try:
        server.start()
        yield server
    finally:
        server.close()
    assert not server.leftovers, (
        f"processes of the server were still running after it stopped: {server.leftovers}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the live server's log to the report of a test that failed with one running."""
    report = yield
    server = getattr(item, "funcargs", {}).get("live_server")
    if report.failed and isinstance(server, LiveServer):
        report.sections.append(
            (f"live server log ({server.log_path})", server.log_tail())
        )
    return report
