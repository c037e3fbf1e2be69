"""Fixtures for server tests: an embedded app (SQLite + in-process Redis) per test."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from server import create_app, migrate
from server.db import get_database
from server.services import tokens


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to head, copied for each test: Alembic is most of an app's
    set-up time, and the copy is the same schema a fresh migration gives."""
    path = tmp_path_factory.mktemp("migrated") / "aami.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def app(tmp_path: Path, migrated_database: Path) -> Flask:
    """A fresh embedded server: its own SQLite file, migrated, and its own fake Redis."""
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    # The backup API copies a consistent database whatever its journal mode.
    source, copy = sqlite3.connect(migrated_database), sqlite3.connect(data_dir / "aami.db")
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return create_app({"DATA_DIR": str(data_dir), "LOG_LEVEL": "warning"})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def make_admin_token(app: Flask) -> Callable[..., str]:
    def make(role: str = "admin", name: str = "ops") -> str:
        with get_database(app).session() as session:
            return tokens.create_admin_token(session, name=name, role=role).secret

    return make


@pytest.fixture
def admin_headers(make_admin_token: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_admin_token()}"}


@pytest.fixture
def readonly_headers(make_admin_token: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_admin_token('read-only', 'viewer')}"}


@pytest.fixture
def make_bootstrap_token(app: Flask) -> Callable[..., str]:
    def make(**options: Any) -> str:
        with get_database(app).session() as session:
            return tokens.create_bootstrap_token(session, name="test", **options).secret

    return make


@pytest.fixture
def register(client: FlaskClient, make_bootstrap_token: Callable[..., str]) -> Callable[..., Any]:
    """Register an agent; returns the JSON reply (asserting a 200/201)."""

    def do_register(agent_id: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {"token": fields.pop("token", None) or make_bootstrap_token(), "hostname": "web-1"}
        if agent_id is not None:
            body["agent_id"] = agent_id
        body.update(fields)
        reply = client.post("/api/v1/bootstrap-tokens/register", json=body)
        assert reply.status_code in (200, 201), reply.get_json()
        return reply.get_json()  # type: ignore[no-any-return]

    return do_register


@pytest.fixture
def agent(
    client: FlaskClient, register: Callable[..., Any], admin_headers: dict[str, str]
) -> dict[str, Any]:
    """A registered agent with the check ``load`` assigned to it, ready to post results."""
    # Imported here, not at the top: results_helpers imports ``bearer`` from this module.
    from tests.server.results_helpers import create_check

    agent: dict[str, Any] = register()
    create_check(client, admin_headers, "load", agent["agent_id"])
    return agent


@pytest.fixture
def redis_client(app: Flask) -> Any:
    """The embedded app's own (in-process) Redis."""
    return app.extensions["aami.redis"]


@pytest.fixture
def make_group(client: FlaskClient, admin_headers: dict[str, str]) -> Callable[..., Any]:
    """Create a group through the API; returns the JSON reply (asserting a 201)."""

    def make(group_id: str, **fields: Any) -> dict[str, Any]:
        body = {"id": group_id, **fields}
        reply = client.post("/api/v1/groups", json=body, headers=admin_headers)
        assert reply.status_code == 201, reply.get_json()
        return reply.get_json()  # type: ignore[no-any-return]

    return make


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_agent_id() -> str:
    return str(uuid.uuid4())


def assert_error(reply: Any, status: int, code: str, mentions: str = "") -> str:
    """Assert ``reply`` is the documented JSON error; returns its message.

    ``mentions`` must appear (case-insensitively) in the message, so a test can insist that
    the message names the problem (a field, a token state, a header).
    """
    assert reply.status_code == status, (reply.status_code, reply.get_data(as_text=True))
    assert reply.is_json, reply.headers.get("Content-Type")
    body = reply.get_json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    assert message, body
    assert mentions.lower() in message.lower(), (mentions, message)
    return message
