"""What job functions run against: the database and Redis of this process's settings.

A worker process configures this once at start; the embedded server configures it with
its own objects, so jobs run inline there touch the same database as the requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from server.db import Database
from server.settings import Settings, load_settings

if TYPE_CHECKING:
    from server.jobs.sinks import EventSinks

_settings: Settings | None = None
_database: Database | None = None
_redis: redis.Redis | None = None
_event_sinks: EventSinks | None = None


def configure(
    settings: Settings,
    database: Database,
    client: redis.Redis,
    event_sinks: EventSinks | None = None,
) -> None:
    """``event_sinks``: where recorded events go (the app's own); made from ``settings``
    on first use when not given."""
    global _settings, _database, _redis, _event_sinks
    _settings, _database, _redis, _event_sinks = settings, database, client, event_sinks


def _ensure() -> None:
    if _database is None:
        from server.redis_conn import connect

        settings = load_settings()
        configure(
            settings,
            Database(settings.database_url()),
            connect(settings.REDIS_URL, settings.DATA_DIR),
        )


def settings() -> Settings:
    _ensure()
    assert _settings is not None
    return _settings


def database() -> Database:
    _ensure()
    assert _database is not None
    return _database


def redis_client() -> redis.Redis:
    _ensure()
    assert _redis is not None
    return _redis


def event_sinks() -> EventSinks:
    global _event_sinks
    _ensure()
    if _event_sinks is None:
        from server.jobs.sinks import make_sinks

        _event_sinks = make_sinks(settings(), redis_client())
    return _event_sinks
