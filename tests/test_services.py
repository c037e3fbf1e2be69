"""The test-service fixtures give real, working, isolated servers."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import redis
import sqlalchemy

from tests.support import services
from tests.support.services import PostgresServer, RedisServer

REPO_ROOT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    """True while ``pid`` exists, zombies included (a zombie is a process nobody reaped)."""
    return Path(f"/proc/{pid}").exists()


def test_redis_url_answers_ping(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()


def test_redis_db_url_starts_empty_and_apart_from_redis_url(
    redis_url: str, redis_db_url: str
) -> None:
    with redis.Redis.from_url(redis_db_url) as mine, redis.Redis.from_url(redis_url) as shared:
        assert mine.dbsize() == 0
        mine.set("aami:test", "1")
        assert shared.get("aami:test") is None


def test_isolated_redis_db_is_flushed_on_exit(redis_url: str) -> None:
    with services.isolated_redis_db(redis_url) as url:
        redis.Redis.from_url(url).set("left-behind", "1")
    with redis.Redis.from_url(url) as client:
        assert client.dbsize() == 0


def test_pg_url_answers_select_1_through_sqlalchemy(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+psycopg://")
    engine = sqlalchemy.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("run", [1, 2])
def test_pg_database_url_is_a_fresh_empty_database_per_test(
    pg_url: str, pg_database_url: str, run: int
) -> None:
    # Both runs find no table: the first run's table went with its database.
    assert sqlalchemy.make_url(pg_database_url).database != sqlalchemy.make_url(pg_url).database
    with psycopg.connect(services.libpq_url(pg_database_url), autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE marker (run int)")


def test_temporary_database_is_dropped_even_with_a_connection_left_open(pg_url: str) -> None:
    with services.temporary_database(pg_url) as url:
        name = sqlalchemy.make_url(url).database
        left_open = psycopg.connect(services.libpq_url(url))
    left_open.close()
    with psycopg.connect(services.libpq_url(pg_url)) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert found is None


def test_redis_with_appendonly_keeps_data_across_sigkill(
    make_redis_server: Callable[..., RedisServer],
) -> None:
    server = make_redis_server(appendonly=True)
    port, pid = server.port, server.pid
    server.client().set("survives", "yes")

    server.kill()
    assert not server.running and pid is not None and not _alive(pid)
    server.restart()

    assert server.port == port
    assert server.client().get("survives") == b"yes"


def test_redis_without_persistence_loses_data_on_sigkill(
    make_redis_server: Callable[..., RedisServer],
) -> None:
    server = make_redis_server()
    server.client().set("gone", "yes")
    server.kill()
    server.start()
    assert server.client().get("gone") is None


def test_postgres_keeps_committed_rows_across_sigkill_of_all_its_processes(
    make_postgres_server: Callable[..., PostgresServer],
) -> None:
    server = make_postgres_server()
    with server.connect(server.database) as conn:
        conn.execute("CREATE TABLE results (id int PRIMARY KEY)")
        conn.execute("INSERT INTO results SELECT generate_series(1, 100)")
    assert server.pid is not None
    processes = [server.pid, *services.child_pids(server.pid)]
    assert len(processes) > 1  # the postmaster and its background workers

    server.kill()
    assert [pid for pid in processes if _alive(pid)] == []
    with pytest.raises(psycopg.OperationalError):
        server.connect()
    server.restart()

    with server.connect(server.database) as conn:
        assert conn.execute("SELECT count(*) FROM results").fetchone() == (100,)
    assert server.url.endswith(f":{server.port}/aami_test")


def test_close_leaves_no_process_and_no_data_dir() -> None:
    with services.required(), RedisServer() as server:
        pid, data_dir = server.pid, server.data_dir
    assert pid is not None and not _alive(pid)
    assert not data_dir.exists()


def test_missing_binaries_name_what_to_install() -> None:
    with pytest.raises(services.ServiceUnavailable, match="apt-get install redis-server"):
        RedisServer(binary="/nonexistent/redis-server")
    with pytest.raises(services.ServiceUnavailable, match="apt-get install postgresql"):
        PostgresServer(bindir="/nonexistent")


def test_missing_service_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install redis"):
        services.skip_or_fail("install redis")


def test_missing_service_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install redis"):
        services.skip_or_fail("install redis")


@pytest.mark.parametrize(
    ("ci", "exit_code", "expected"),
    [("true", 1, "CI=true: a missing service fails the run"), ("", 0, "1 skipped")],
)
def test_pytest_run_without_redis_fails_in_ci_and_skips_elsewhere(
    ci: str, exit_code: int, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "PYTEST_ADDOPTS"}}
    env |= {"CI": ci, "AAMI_TEST_DOCKER": "0", "AAMI_TEST_REDIS_SERVER": "/nonexistent/redis"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
         "tests/test_services.py::test_redis_url_answers_ping"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == exit_code, run.stdout + run.stderr
    assert expected in run.stdout
    assert "apt-get install redis-server" in run.stdout
