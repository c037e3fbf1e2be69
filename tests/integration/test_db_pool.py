"""The connection pool on real PostgreSQL: a connection the server dropped while it sat
idle in the pool is found by the ping and replaced before a request sees it; one that
was in use a moment ago is not pinged, fails once, and takes the pool's other stale
connections with it."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from server.db import make_engine
from tests.support.services import libpq_url

pytestmark = pytest.mark.integration


def _backend_pid(engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def test_an_idle_connection_the_server_dropped_is_replaced_unseen(pg_database_url):
    engine = make_engine(pg_database_url, ping_after_idle_s=0.0)
    try:
        dropped = _backend_pid(engine)
        _terminate(pg_database_url, dropped)
        replacement = _backend_pid(engine)
        assert replacement != dropped
        assert engine.pool.checkedin() == 1  # the dead one is gone, not kept beside it
    finally:
        engine.dispose()


def test_a_recently_used_connection_is_not_pinged_and_fails_once(pg_database_url):
    engine = make_engine(pg_database_url, ping_after_idle_s=3600.0)
    try:
        with engine.connect() as first, engine.connect() as second:
            pids = [int(c.execute(text("SELECT pg_backend_pid()")).scalar_one())
                    for c in (first, second)]
        for pid in pids:
            _terminate(pg_database_url, pid)
        with pytest.raises(OperationalError) as raised:
            _backend_pid(engine)
        assert raised.value.connection_invalidated
        # The disconnect recycled the whole pool: the other dead connection is not handed
        # out either.
        assert _backend_pid(engine) not in pids
    finally:
        engine.dispose()
