"""Fixtures shared by every test: real Redis and PostgreSQL servers (tests/support/services.py).

Session fixtures start one server of each kind, lazily, on first use; per-test fixtures carve
an isolated piece out of it. Tests that crash servers on purpose get private ones from the
``make_*_server`` factories.
"""

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support import services
from tests.support.services import PostgresServer, RedisServer, Service

SERVICE_FIXTURES = {
    "redis_server", "redis_url", "redis_db_url", "make_redis_server",
    "postgres_server", "pg_url", "pg_database_url", "make_postgres_server",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real service as ``integration`` (-m "not integration")."""
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Service]:
    """The session's Redis: REDIS_URL, a container, or a local redis-server."""
    with services.required():
        server = services.redis_service()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: Service) -> str:
    """URL of db 0 of the session's Redis (shared by all tests, never flushed)."""
    return redis_server.url


@pytest.fixture
def redis_db_url(redis_url: str) -> Iterator[str]:
    """URL of a Redis logical db of this test's own, empty at the start, flushed after."""
    with services.isolated_redis_db(redis_url) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Service]:
    """The session's PostgreSQL: DATABASE_URL, a container, or a local PostgreSQL 15."""
    with services.required():
        server = services.postgres_service()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_url(postgres_server: Service) -> str:
    """SQLAlchemy URL (postgresql+psycopg://) of the shared ``aami_test`` database."""
    return postgres_server.url


@pytest.fixture
def pg_database_url(pg_url: str) -> Iterator[str]:
    """SQLAlchemy URL of a new empty database for this test alone, dropped afterwards."""
    with services.temporary_database(pg_url) as url:
        yield url


@pytest.fixture
def make_redis_server() -> Iterator[Callable[..., RedisServer]]:
    """Start private redis-servers (RedisServer arguments) that the test may kill."""
    started: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        with services.required():
            started.append(RedisServer(**kwargs))
        return started[-1].start()

    yield make
    for server in started:
        server.close()


@pytest.fixture
def make_postgres_server() -> Iterator[Callable[..., PostgresServer]]:
    """Start private PostgreSQL servers (PostgresServer arguments) that the test may kill."""
    started: list[PostgresServer] = []

    def make(**kwargs: Any) -> PostgresServer:
        with services.required():
            started.append(PostgresServer(**kwargs))
        return started[-1].start()

    yield make
    for server in started:
        server.close()
