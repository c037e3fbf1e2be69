"""Failed admin-token authentication: audited sparingly, rate-limited per client address."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from server.db import get_database
from server.models import AuditLog
from server.security import admin_auth
from tests.server.conftest import assert_error, bearer

WRONG = "aami_adm_" + "x" * 40


@pytest.fixture(autouse=True)
def three_failures_an_hour(monkeypatch):
    # An hour-long window: a test never straddles two windows.
    monkeypatch.setenv("AAMI_ADMIN_AUTH_FAILURE_LIMIT", "3/1h")


def _list_targets(client, token, address="192.0.2.10"):
    return client.get(
        "/api/v1/targets", headers=bearer(token), environ_base={"REMOTE_ADDR": address}
    )


def _failure_entries(app):
    with get_database(app).session() as session:
        return list(
            session.scalars(select(AuditLog).where(AuditLog.action == admin_auth.ACTION))
        )


def test_address_over_its_failures_is_refused_even_with_a_good_token(client, make_admin_token):
    good = make_admin_token()
    for _ in range(3):
        assert_error(_list_targets(client, WRONG), 401, "invalid_token")
    refused = _list_targets(client, good)
    assert_error(refused, 429, "too_many_auth_failures", mentions="192.0.2.10")
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    # Another address is not affected.
    assert _list_targets(client, good, address="192.0.2.99").status_code == 200


def test_failures_are_audited_without_the_secret_and_without_flooding(app, client):
    for _ in range(20):
        _list_targets(client, WRONG)
    entries = _failure_entries(app)
    # The first failure and the one that spent the budget; the refused rest adds nothing.
    assert [e.details["failures_in_window"] for e in entries] == [1, 3]
    assert {e.actor for e in entries} == {"client:192.0.2.10"}
    assert entries[1].details["now_refused_for_s"] >= 1
    assert all(WRONG not in str(e.details) for e in entries)


def test_audit_entries_are_capped_over_all_addresses(app, client, monkeypatch):
    monkeypatch.setattr(admin_auth, "AUDIT_CAP_PER_WINDOW", 2)
    for n in range(10):
        _list_targets(client, WRONG, address=f"198.51.100.{n}")
    entries = _failure_entries(app)
    assert len(entries) == 3
    assert "not audited" in entries[-1].details["reason"]


def test_ui_login_failures_count_too(app, client):
    from tests.ui.conftest import csrf_from

    for _ in range(3):
        reply = client.post(
            "/ui/login", data={"token": WRONG, "csrf_token": csrf_from(client)}
        )
        assert reply.status_code == 401
    reply = client.post("/ui/login", data={"token": WRONG, "csrf_token": csrf_from(client)})
    assert reply.status_code == 429
    assert int(reply.headers["Retry-After"]) >= 1
    assert [e.details["via"] for e in _failure_entries(app)] == ["ui", "ui"]
