"""Schema migrations with Alembic, driven from ``aami-server db ...``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from server.db import make_engine


def migrations_dir() -> Path:
    """The Alembic scripts: ``migrations/`` in a checkout, ``server/migrations`` when installed."""
    packaged = Path(__file__).resolve().parent / "migrations"
    if (packaged / "env.py").exists():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    make_engine(url).dispose()  # creates the SQLite file's directory when needed
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
