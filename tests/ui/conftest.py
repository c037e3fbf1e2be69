"""Fixtures for the UI tests.

Fast tests use Flask's test client on an embedded app (``app``, ``client``, ``fleet``,
``login``). Browser tests (``test_browser.py``) use a real ``aami-server serve`` and
headless Chromium driven by Selenium, set up once for the module that uses them and
stopped after it (``live_server``, ``live_fleet``, ``browser``).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from server import create_app, migrate
from server.db import get_database
from server.services import tokens
from tests.ui.fleet import ClientApi, Fleet, HttpApi
from tests.ui.live import Browser, EmbeddedServer, chromium, chromium_or_skip

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives headless Chromium with Selenium")


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied for each test (migrating is most of the set-up)."""
    path = tmp_path_factory.mktemp("ui-migrated") / "aami.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def app(tmp_path: Path, migrated_database: Path) -> Flask:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
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
def admin_token(make_admin_token: Callable[..., str]) -> str:
    return make_admin_token("admin", "ops")


@pytest.fixture
def fleet(app: Flask, admin_token: str) -> Fleet:
    """The fleet of ``tests/ui/fleet.py``, registered and reporting, through the API
    (a short history: the plots' own tests use longer ones)."""
    return Fleet(ClientApi(app.test_client()), admin_token).seed(minutes=6)


def csrf_from(client: FlaskClient, path: str = "/ui/login") -> str:
    """The session's CSRF token, as the page at ``path`` puts it into its forms."""
    page = client.get(path)
    found = CSRF_INPUT.search(page.get_data(as_text=True))
    assert found, f"no CSRF field on {path} ({page.status_code})"
    return found.group(1)


@pytest.fixture
def login(client: FlaskClient, make_admin_token: Callable[..., str]) -> Callable[..., str]:
    """Log ``client`` in with a new token of ``role``; returns the session's CSRF token."""

    def do_login(role: str = "admin", token: str | None = None) -> str:
        secret = token or make_admin_token(role, f"{role}-user")
        reply = client.post(
            "/ui/login", data={"token": secret, "csrf_token": csrf_from(client)}
        )
        assert reply.status_code == 302, reply.get_data(as_text=True)
        return csrf_from(client, "/ui/")

    return do_login


@pytest.fixture
def logged_in(login: Callable[..., str]) -> Iterator[str]:
    """An admin session on ``client``; yields its CSRF token."""
    yield login("admin")


# --------------------------------------------------------------------------- browser tests


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """``aami-server serve`` in embedded mode (SQLite and jobs in-process) on a free port."""
    server = EmbeddedServer(tmp_path_factory.mktemp("ui-server"))
    try:
        server.start()
        yield server
    finally:
        server.close()
    assert not server.leftovers, f"server processes left running: {server.leftovers}"


@pytest.fixture(scope="module")
def live_tokens(live_server: EmbeddedServer) -> dict[str, str]:
    """An admin and a read-only token, made with ``aami-server admin-token create``."""
    return {
        "admin": live_server.admin_token("ui-admin"),
        "read-only": live_server.admin_token("ui-viewer", role="read-only"),
    }


@pytest.fixture(scope="module")
def live_fleet(live_server: EmbeddedServer, live_tokens: dict[str, str]) -> Fleet:
    """The fleet of ``tests/ui/fleet.py``, registered and reporting over HTTP."""
    return Fleet(HttpApi(live_server.url), live_tokens["admin"]).seed()


@pytest.fixture(scope="module")
def chromium_driver() -> Iterator[object]:
    """Headless Chromium, requested after ``live_server``: it is quit first and leaves no
    keep-alive connection to hold the server's shutdown."""
    chromium_or_skip()
    with chromium() as driver:
        yield driver


@pytest.fixture
def browser(
    live_server: EmbeddedServer,
    live_tokens: dict[str, str],
    live_fleet: Fleet,
    chromium_driver: object,
) -> Browser:
    """The module's browser, logged in as admin, with the fleet freshly heartbeating."""
    live_fleet.heartbeat()
    browser = Browser(chromium_driver, live_server.url, live_tokens)
    browser.log_in("admin")
    return browser
