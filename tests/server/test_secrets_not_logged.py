"""No secret ever reaches a log line or the audit log.

An agent's whole credential life (register with a CSR, refresh, a replayed refresh token,
a rate-limited flood) and an operator's token work run with every logger at DEBUG through
the server's JSON formatter, SQL statements with their parameters included; then no
bootstrap token, refresh token, access JWT or admin token may appear in any line or row.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from server import create_app
from server.db import get_database
from server.logs import JsonFormatter
from server.models import AuditLog
from server.security.ca import init_ca
from tests.server.conftest import bearer, new_agent_id
from tests.server.test_client_certificates import make_csr

REGISTER = "/api/v1/bootstrap-tokens/register"


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    engine = logging.getLogger("sqlalchemy.engine")
    saved = (root.level, engine.level)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    engine.setLevel(logging.INFO)  # every statement and its parameters
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        engine.setLevel(saved[1])


def test_no_secret_in_any_log_line_or_audit_row(app, captured_logs, make_admin_token):
    init_ca(app.extensions["aami.settings"].ca_dir())
    limited = create_app(
        {
            "DATA_DIR": app.extensions["aami.settings"].DATA_DIR,
            "LOG_LEVEL": "debug",
            "REFRESH_RATE_LIMIT": "3/1m",
        }
    )
    client = limited.test_client()
    secrets: list[str] = []

    admin = make_admin_token(name="ops")
    secrets.append(admin)
    created = client.post(
        "/api/v1/bootstrap-tokens", json={"name": "fleet"}, headers=bearer(admin)
    ).get_json()
    bootstrap = created["token"]
    secrets.append(bootstrap)

    agent_id = new_agent_id()
    registered = client.post(
        REGISTER,
        json={"token": bootstrap, "hostname": "web-1", "agent_id": agent_id, "csr": make_csr()},
    )
    assert registered.status_code == 201, registered.get_json()
    reply = registered.get_json()
    secrets += [reply["access_token"], reply["refresh_token"]]

    first_refresh = reply["refresh_token"]
    refresh = reply["refresh_token"]
    for _ in range(2):
        rotated = client.post(
            f"/api/v1/agents/{agent_id}/token", json={"refresh_token": refresh}
        )
        assert rotated.status_code == 200
        refresh = rotated.get_json()["refresh_token"]
        secrets += [rotated.get_json()["access_token"], refresh]
    # A replayed (stolen) refresh token, then the flood that trips the rate limit.
    replayed = client.post(
        f"/api/v1/agents/{agent_id}/token", json={"refresh_token": first_refresh}
    )
    assert replayed.status_code == 401
    flooded = client.post(f"/api/v1/agents/{agent_id}/token", json={"refresh_token": refresh})
    assert flooded.status_code == 429
    # The bootstrap token used again, and an unknown admin token.
    client.post(REGISTER, json={"token": bootstrap, "hostname": "web-2"})
    client.get("/api/v1/targets", headers=bearer(admin[:-4] + "xxxx"))
    client.delete(f"/api/v1/bootstrap-tokens/{created['id']}", headers=bearer(admin))

    lines = captured_logs.getvalue().splitlines()
    messages = "\n".join(lines)
    # The capture worked: the calls above were logged, statements included.
    assert '"msg": "agent registered"' in messages
    assert '"msg": "agent token refreshed"' in messages
    assert '"msg": "rate limited"' in messages
    assert "client certificate issued" in messages
    assert "INSERT INTO agent_credentials" in messages
    with get_database(app).session() as session:
        rows = [
            f"{r.actor} {r.action} {r.subject} {r.details}"
            for r in session.scalars(select(AuditLog))
        ]
    assert {"bootstrap_token.create", "certificate.issue", "bootstrap_token.revoke"} <= {
        row.split()[2] if row.startswith("admin:") else row.split()[1] for row in rows
    }
    for secret in secrets:
        # The random part alone, too: a secret cut at its prefix is still a secret.
        body = secret.split("_", 2)[-1] if secret.startswith("aami_") else secret
        for line in lines:
            assert body not in line, f"a secret in the log: {line[:300]}"
        for row in rows:
            assert body not in row, f"a secret in the audit log: {row[:300]}"
