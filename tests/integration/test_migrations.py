"""``aami-server db ...`` on real PostgreSQL and SQLite: the schema the models describe.

The CLI runs as a subprocess with only AAMI_* settings, exactly as a deployment runs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from server import migrate
from server.models import Base
from tests.integration.live_server import run_cli
from tests.support.services import libpq_url

pytestmark = pytest.mark.integration

MODEL_TABLES = set(Base.metadata.tables)


def head_revision() -> str:
    """The newest revision of the migration scripts (not hard-coded: it moves)."""
    head = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def db(url: str, tmp_path: Path, *args: str) -> str:
    return run_cli("db", *args, settings={"AAMI_DATABASE_URL": url,
                                          "AAMI_DATA_DIR": str(tmp_path / "var")},
                   cwd=tmp_path).stdout


def tables(url: str) -> set[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def schema_differences(url: str) -> list[Any]:
    """What ``alembic revision --autogenerate`` would still find to change."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def postgres_leftovers(url: str) -> list[tuple[str, str]]:
    """Relations and types in the public schema other than Alembic's own bookkeeping."""
    with psycopg.connect(libpq_url(url)) as conn:
        relations = conn.execute(
            "SELECT c.relname, c.relkind::text FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
        ).fetchall()
        types = conn.execute(
            "SELECT t.typname, t.typtype::text FROM pg_type t"
            " JOIN pg_namespace n ON n.oid = t.typnamespace"
            " WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'r', 'm')"
        ).fetchall()
    return sorted(
        (name, kind) for name, kind in relations + types if not name.startswith("alembic_version")
    )


@pytest.fixture
def empty_sqlite_url(tmp_path: Path) -> str:
    """An empty SQLite file (zero bytes is a valid, empty database)."""
    path = tmp_path / "aami.db"
    path.touch()
    return f"sqlite:///{path}"


@pytest.fixture(params=["postgresql", "sqlite"])
def migrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of each backend after ``aami-server db upgrade``."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_database_url")
    else:
        url = request.getfixturevalue("empty_sqlite_url")
    db(url, tmp_path, "upgrade")
    yield url


def test_db_upgrade_creates_the_schema_on_an_empty_postgresql_database(
    pg_database_url: str, tmp_path: Path
) -> None:
    assert tables(pg_database_url) == set()

    out = db(pg_database_url, tmp_path, "upgrade")

    assert out.strip().splitlines()[-1] == f"database at revision {head_revision()}"
    assert tables(pg_database_url) == MODEL_TABLES | {"alembic_version"}
    assert db(pg_database_url, tmp_path, "current").strip() == head_revision()


def test_db_upgrade_creates_the_schema_on_an_empty_sqlite_file(
    empty_sqlite_url: str, tmp_path: Path
) -> None:
    out = db(empty_sqlite_url, tmp_path, "upgrade")

    assert out.strip().splitlines()[-1] == f"database at revision {head_revision()}"
    assert tables(empty_sqlite_url) == MODEL_TABLES | {"alembic_version"}


def test_db_upgrade_without_a_database_url_migrates_the_embedded_sqlite_file(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    run_cli("db", "upgrade", settings={"AAMI_DATA_DIR": str(data_dir)}, cwd=tmp_path)

    assert tables(f"sqlite:///{data_dir / 'aami.db'}") == MODEL_TABLES | {"alembic_version"}
    assert not (tmp_path / "var").exists()


def test_db_upgrade_twice_is_a_no_op(pg_database_url: str, tmp_path: Path) -> None:
    db(pg_database_url, tmp_path, "upgrade")
    out = db(pg_database_url, tmp_path, "upgrade")

    assert out.strip().splitlines()[-1] == f"database at revision {head_revision()}"
    assert schema_differences(pg_database_url) == []


def test_postgresql_migrates_up_down_to_base_and_up_again(
    pg_database_url: str, tmp_path: Path
) -> None:
    db(pg_database_url, tmp_path, "upgrade")
    assert tables(pg_database_url) == MODEL_TABLES | {"alembic_version"}

    db(pg_database_url, tmp_path, "downgrade", "base")

    assert tables(pg_database_url) == {"alembic_version"}
    assert postgres_leftovers(pg_database_url) == []
    assert db(pg_database_url, tmp_path, "current").startswith("empty")

    db(pg_database_url, tmp_path, "upgrade")

    assert tables(pg_database_url) == MODEL_TABLES | {"alembic_version"}
    assert db(pg_database_url, tmp_path, "current").strip() == head_revision()
    assert schema_differences(pg_database_url) == []


def test_migrated_schema_matches_the_models(migrated_url: str) -> None:
    assert schema_differences(migrated_url) == []
