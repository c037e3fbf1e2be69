"""Fixtures of the fault suite: services of its own, which its tests may kill.

The services always come from the local binaries (tests/support/services.py), even when
``REDIS_URL`` / ``DATABASE_URL`` name running servers or Docker is there: a test must be
able to SIGKILL them and start them again on the same port and data directory, and
killing a shared server would break other tests. Without the binaries the suite skips,
or fails under ``CI=true``.

PostgreSQL is one private cluster for the whole suite (``initdb`` costs seconds), with a
fresh database per test; a test that kills it restarts it, and every test starts by making
sure it runs. Redis is a private ``redis-server`` per test with the persistence the
README recommends for production: ``appendonly yes``, ``appendfsync everysec``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.harness import FaultSystem, fault_system
from tests.support import services
from tests.support.services import PostgresServer, RedisServer


@pytest.fixture(scope="session")
def fault_postgres() -> Iterator[PostgresServer]:
    with services.required():
        server = PostgresServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def postgres(fault_postgres: PostgresServer) -> PostgresServer:
    fault_postgres.start()  # a no-op unless an earlier test left it down
    return fault_postgres


@pytest.fixture
def database_url(postgres: PostgresServer) -> Iterator[str]:
    with services.temporary_database(postgres.url, prefix="aami_fault") as url:
        yield url


@pytest.fixture
def redis_server(make_redis_server: Callable[..., RedisServer]) -> RedisServer:
    return make_redis_server(appendonly=True)


@pytest.fixture
def system(
    tmp_path: Path, redis_server: RedisServer, postgres: PostgresServer, database_url: str
) -> Iterator[FaultSystem]:
    with fault_system(tmp_path, redis_server=redis_server, postgres=postgres,
                      database_url=database_url) as running:
        yield running
