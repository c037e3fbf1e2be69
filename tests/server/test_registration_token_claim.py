"""A registration takes its use of the bootstrap token alone, and gives it back on failure.

Every agent of a fleet registers with the same bootstrap token, and counting a use is a
conditional UPDATE of that token's one row. Inside the registration's transaction,
PostgreSQL kept the row locked until the commit, and registrations queued behind each
other holding pool connections that heartbeats then lacked (the fleet simulator saw 20 s
waits). The use is now taken in a statement of its own (autocommit) and returned when the
registration fails, so uses still count only registrations that happened.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from server import create_app, migrate
from server.api import registration as registration_view
from server.db import get_database
from server.models import BootstrapToken
from server.services import tokens
from tests.server.conftest import new_agent_id
from tests.support.services import libpq_url


def _uses(app, secret: str) -> int:
    with get_database(app).session() as session:
        row = session.scalar(select(BootstrapToken).where(
            BootstrapToken.token_hash == tokens.hash_secret(secret)))
        assert row is not None
        return row.uses


def _register(client, token: str, **fields):
    body = {"token": token, "agent_id": new_agent_id(), "hostname": "web-1", **fields}
    return client.post("/api/v1/bootstrap-tokens/register", json=body)


def test_each_registration_counts_one_use(app, client, make_bootstrap_token):
    token = make_bootstrap_token()
    for expected in (1, 2):
        assert _register(client, token).status_code == 201
        assert _uses(app, token) == expected


def test_a_registration_that_fails_gives_its_use_back(app, client, make_bootstrap_token):
    token = make_bootstrap_token(max_uses=1)
    # Refused after the use was taken: an unknown group is checked by the registration.
    reply = _register(client, token, group_id="no-such-group")
    assert reply.status_code == 409, reply.get_json()
    assert _uses(app, token) == 0
    # The one use is still there for a registration that works.
    assert _register(client, token).status_code == 201
    assert _uses(app, token) == 1
    spent = _register(client, token)
    assert spent.status_code == 401
    assert spent.get_json()["error"]["code"] == "invalid_bootstrap_token"


def test_an_identity_conflict_costs_no_use(app, client, make_bootstrap_token):
    token = make_bootstrap_token()
    agent_id = new_agent_id()
    assert _register(client, token, agent_id=agent_id).status_code == 201
    stolen = _register(client, token, agent_id=agent_id)
    assert stolen.status_code == 409, stolen.get_json()
    assert _uses(app, token) == 1


@pytest.mark.integration
def test_a_registration_in_progress_does_not_lock_the_token(
    pg_database_url: str, redis_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL: while one registration's transaction is still open, another
    connection can take a use of the same token at once."""
    migrate.upgrade(pg_database_url)
    app = create_app({"DATABASE_URL": pg_database_url, "REDIS_URL": redis_db_url,
                      "DATA_DIR": str(tmp_path), "LOG_LEVEL": "warning",
                      "SECRET_KEY": "k" * 40})
    with get_database(app).session() as session:
        secret = tokens.create_bootstrap_token(session, name="fleet").secret
    token_hash = tokens.hash_secret(secret)
    outcome: list[str] = []
    real_register_agent = registration_view.register_agent

    def claim_from_elsewhere() -> None:
        # Another server process's registration, with a lock timeout instead of a queue.
        with psycopg.connect(libpq_url(pg_database_url), autocommit=True) as conn:
            conn.execute("SET lock_timeout = '2s'")
            try:
                conn.execute("UPDATE bootstrap_tokens SET uses = uses + 1 WHERE token_hash = %s",
                             (token_hash,))
                outcome.append("claimed")
            except psycopg.errors.LockNotAvailable:
                outcome.append("blocked by the registration in progress")

    def register_then_compete(*args, **kwargs):
        registered = real_register_agent(*args, **kwargs)  # its writes done, not committed
        other = threading.Thread(target=claim_from_elsewhere)
        other.start()
        other.join(timeout=10)
        return registered

    monkeypatch.setattr(registration_view, "register_agent", register_then_compete)
    reply = _register(app.test_client(), secret)
    assert reply.status_code == 201, reply.get_json()
    assert outcome == ["claimed"]
    assert _uses(app, secret) == 2
