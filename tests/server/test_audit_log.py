"""The audit log: each admin change leaves a row in its own transaction; GET /api/v1/audit."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

import server.api
from server.api.routing import REGISTRY
from server.cli import main
from server.db import get_database
from server.jobs import dead_letters
from server.models import AdminToken, AuditLog
from server.services import audit as audit_service
from tests.server.conftest import assert_error, bearer, new_agent_id

CHECK = {"id": "disk", "command": ["/usr/lib/nagios/plugins/check_disk"], "interval": "60s"}


def _rows(app) -> list[AuditLog]:
    with get_database(app).session() as session:
        return list(session.scalars(select(AuditLog).order_by(AuditLog.id)))


@pytest.fixture
def ops(app, make_admin_token) -> dict[str, Any]:
    """An admin token and the actor name the audit log gives it."""
    secret = make_admin_token(name="ops")
    with get_database(app).session() as session:
        row = session.scalar(select(AdminToken).where(AdminToken.name == "ops"))
        token_id = row.id
    return {"headers": bearer(secret), "actor": f"admin:ops ({token_id[:8]})", "secret": secret}


class Fleet:
    """Things to change, made through the API."""

    def __init__(self, client, headers, register) -> None:
        self.client, self.headers, self.register = client, headers, register

    def post(self, path: str, body: dict[str, Any]) -> Any:
        reply = self.client.post(f"/api/v1{path}", json=body, headers=self.headers)
        assert reply.status_code in (200, 201, 202), reply.get_json()
        return reply.get_json()

    def target(self) -> str:
        return self.post("/targets", {"hostname": "web-1", "id": new_agent_id()})["id"]

    def check(self, target_id: str | None = None) -> str:
        assign = {"target_ids": [target_id]} if target_id else {}
        return self.post("/checks", {**CHECK, "assign": assign})["id"]


# (method, path) -> (do the write, expected action, expected subject)
Write = Callable[[Fleet], tuple[Any, str, str]]


def _patch_check(f: Fleet) -> tuple[Any, str, str]:
    check = f.check()
    reply = f.client.patch(f"/api/v1/checks/{check}", json={"timeout": "5s"}, headers=f.headers)
    return reply, "check.update", check


def _delete_check(f: Fleet) -> tuple[Any, str, str]:
    check = f.check()
    return f.client.delete(f"/api/v1/checks/{check}", headers=f.headers), "check.delete", check


def _patch_target(f: Fleet) -> tuple[Any, str, str]:
    target = f.target()
    reply = f.client.patch(f"/api/v1/targets/{target}", json={"maintenance": True},
                           headers=f.headers)
    return reply, "target.update", target


def _delete_target(f: Fleet) -> tuple[Any, str, str]:
    target = f.target()
    return f.client.delete(f"/api/v1/targets/{target}", headers=f.headers), "target.delete", target


def _reset_target(f: Fleet) -> tuple[Any, str, str]:
    target = f.target()
    reply = f.client.post(f"/api/v1/targets/{target}/reset", headers=f.headers)
    return reply, "agent.reset", target


def _delete_group(f: Fleet) -> tuple[Any, str, str]:
    f.post("/groups", {"id": "web"})
    return f.client.delete("/api/v1/groups/web", headers=f.headers), "group.delete", "web"


def _revoke_token(f: Fleet) -> tuple[Any, str, str]:
    token = f.post("/bootstrap-tokens", {"name": "t"})
    reply = f.client.delete(f"/api/v1/bootstrap-tokens/{token['id']}", headers=f.headers)
    return reply, "bootstrap_token.revoke", token["id"]


def _force_check(f: Fleet) -> tuple[Any, str, str]:
    target = f.target()
    check = f.check(target)
    reply = f.client.post(f"/api/v1/targets/{target}/checks/{check}/run", headers=f.headers)
    return reply, "check.force_run", target


def _dead_letter(f: Fleet) -> str:
    """A result batch set aside by ingestion (as a batch the database refused would be)."""
    app = f.client.application
    item = json.dumps({"agent_id": new_agent_id(), "results": []}).encode()
    refused = dead_letters.Refused(item, "DataError: refused")
    dead_letters.set_aside(get_database(app), app.extensions["aami.redis"], [refused])
    return dead_letters.letter_id(item)


def _replay_dead_letter(f: Fleet) -> tuple[Any, str, str]:
    letter = _dead_letter(f)
    reply = f.client.post(f"/api/v1/ingest/dead-letters/{letter}/replay", headers=f.headers)
    return reply, "dead_letter.replay", letter


def _drop_dead_letter(f: Fleet) -> tuple[Any, str, str]:
    letter = _dead_letter(f)
    reply = f.client.delete(f"/api/v1/ingest/dead-letters/{letter}", headers=f.headers)
    return reply, "dead_letter.drop", letter


def _create(path: str, body: dict[str, Any], action: str, subject_key: str = "id") -> Write:
    def write(f: Fleet) -> tuple[Any, str, str]:
        reply = f.client.post(f"/api/v1{path}", json=body, headers=f.headers)
        return reply, action, (reply.get_json() or {}).get(subject_key, "")

    return write


WRITES: dict[tuple[str, str], Write] = {
    ("post", "/api/v1/checks"): _create("/checks", CHECK, "check.create"),
    ("patch", "/api/v1/checks/<check_id>"): _patch_check,
    ("delete", "/api/v1/checks/<check_id>"): _delete_check,
    ("post", "/api/v1/targets"): _create("/targets", {"hostname": "db-1"}, "target.create"),
    ("patch", "/api/v1/targets/<target_id>"): _patch_target,
    ("delete", "/api/v1/targets/<target_id>"): _delete_target,
    ("post", "/api/v1/targets/<target_id>/reset"): _reset_target,
    ("post", "/api/v1/groups"): _create("/groups", {"id": "db"}, "group.create"),
    ("delete", "/api/v1/groups/<group_id>"): _delete_group,
    ("post", "/api/v1/bootstrap-tokens"): _create(
        "/bootstrap-tokens", {"name": "fleet"}, "bootstrap_token.create"
    ),
    ("delete", "/api/v1/bootstrap-tokens/<token_id>"): _revoke_token,
    ("post", "/api/v1/targets/<target_id>/checks/<check_id>/run"): _force_check,
    ("post", "/api/v1/ingest/dead-letters/<letter_id>/replay"): _replay_dead_letter,
    ("delete", "/api/v1/ingest/dead-letters/<letter_id>"): _drop_dead_letter,
}


def _write_routes() -> set[tuple[str, str]]:
    for module in pkgutil.iter_modules(server.api.__path__):
        importlib.import_module(f"server.api.{module.name}")
    return {(doc.method, doc.path) for doc in REGISTRY if doc.auth == "admin-write"}


def test_every_admin_write_route_has_an_audit_case():
    """A new write route must come with its audit row (and a case here proving it)."""
    assert _write_routes() == set(WRITES)


@pytest.mark.parametrize("route", sorted(WRITES), ids=lambda r: f"{r[0]} {r[1]}")
def test_admin_write_leaves_an_audit_row(app, client, ops, register, route):
    fleet = Fleet(client, ops["headers"], register)
    reply, action, subject = WRITES[route](fleet)
    assert reply.status_code in (200, 201, 202, 204), reply.get_data(as_text=True)
    rows = [r for r in _rows(app) if r.action == action]
    assert rows, f"no {action} row"
    row = rows[-1]
    assert (row.actor, row.subject) == (ops["actor"], subject)
    assert row.created_at > datetime.now(UTC) - timedelta(minutes=1)


def test_failed_change_leaves_no_row(app, client, ops):
    assert client.post("/api/v1/checks", json=CHECK, headers=ops["headers"]).status_code == 201
    assert client.post("/api/v1/checks", json=CHECK, headers=ops["headers"]).status_code == 409
    missing = client.patch("/api/v1/targets/" + new_agent_id(), json={"maintenance": True},
                           headers=ops["headers"])
    assert missing.status_code == 404
    assert [r.action for r in _rows(app)] == ["check.create"]


def test_audit_row_commits_with_its_change(app, client, ops, monkeypatch):
    """Same transaction: if the change cannot be committed, neither is its row, and the
    other way round."""

    def broken_record(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("audit store broken")

    monkeypatch.setattr(audit_service, "record", broken_record)
    reply = client.post("/api/v1/groups", json={"id": "web"}, headers=ops["headers"])
    assert reply.status_code == 500
    monkeypatch.undo()
    assert client.get("/api/v1/groups/web", headers=ops["headers"]).status_code == 404


def test_maintenance_toggle_records_old_and_new_value(app, client, ops):
    target = client.post("/api/v1/targets", json={"hostname": "h"}, headers=ops["headers"])
    target_id = target.get_json()["id"]
    for state in (True, False):
        reply = client.patch(f"/api/v1/targets/{target_id}", json={"maintenance": state},
                             headers=ops["headers"])
        assert reply.status_code == 200
    updates = [r.details for r in _rows(app) if r.action == "target.update"]
    assert updates == [
        {"changes": {"maintenance": {"from": False, "to": True}}},
        {"changes": {"maintenance": {"from": True, "to": False}}},
    ]


def test_check_update_records_what_changed(app, client, ops):
    client.post("/api/v1/checks", json={**CHECK, "env": {"DB_PASSWORD": "hunter2"}},
                headers=ops["headers"])
    client.patch("/api/v1/checks/disk", json={"interval": "5m", "maintenance": True},
                 headers=ops["headers"])
    create, update = [r.details for r in _rows(app)]
    assert create["check"]["command"] == CHECK["command"]
    # Environment values may be credentials: only their names are kept.
    assert create["check"]["env_keys"] == ["DB_PASSWORD"]
    assert "hunter2" not in repr(create)
    assert update == {
        "changes": {"interval": {"from": "1m", "to": "5m"},
                    "maintenance": {"from": False, "to": True}}
    }


def test_bootstrap_token_row_holds_no_secret(app, client, ops):
    reply = client.post("/api/v1/bootstrap-tokens", json={"name": "web", "max_uses": 5},
                        headers=ops["headers"])
    secret = reply.get_json()["token"]
    [row] = _rows(app)
    assert row.details["name"] == "web"
    assert row.details["max_uses"] == 5
    assert secret[:14] == row.details["prefix"]
    assert secret not in repr(row.details)
    assert "token" not in row.details


def test_scrub_redacts_what_looks_like_a_secret():
    details = audit_service._scrub(
        {
            "token": "anything",
            "note": "aami_rt_" + "a" * 43,
            "nested": [{"bearer": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"}],
            "prefix": "aami_bt_abcdef",
        }
    )
    assert details == {
        "token": "[redacted]",
        "note": "[redacted]",
        "nested": [{"bearer": "[redacted]"}],
        "prefix": "aami_bt_abcdef",
    }


# --- reading it --------------------------------------------------------------------------


@pytest.fixture
def history(app, client, ops) -> list[dict[str, Any]]:
    for group in ("a", "b", "c"):
        client.post("/api/v1/groups", json={"id": group}, headers=ops["headers"])
    client.delete("/api/v1/groups/b", headers=ops["headers"])
    with get_database(app).session() as session:
        audit_service.record(session, "cli:root", "admin_token.create", "x", {"name": "n"})
    return client.get("/api/v1/audit", headers=ops["headers"]).get_json()


def test_audit_lists_newest_first(history, ops):
    assert [(e["action"], e["subject"]) for e in history] == [
        ("admin_token.create", "x"),
        ("group.delete", "b"),
        ("group.create", "c"),
        ("group.create", "b"),
        ("group.create", "a"),
    ]
    assert set(history[1]) == {"id", "actor", "action", "subject", "details", "created_at"}
    assert history[1]["actor"] == ops["actor"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"action": "group.create"}, ["c", "b", "a"]),
        ({"action": "group."}, ["b", "c", "b", "a"]),
        ({"subject": "b"}, ["b", "b"]),
        ({"actor": "cli:root"}, ["x"]),
        ({"limit": 2}, ["x", "b"]),
    ],
)
def test_audit_filters(client, ops, history, query, expected):
    reply = client.get("/api/v1/audit", query_string=query, headers=ops["headers"])
    assert reply.status_code == 200, reply.get_json()
    assert [e["subject"] for e in reply.get_json()] == expected


def test_audit_pages_with_before_id_and_time(client, ops, history):
    page = client.get("/api/v1/audit", query_string={"before_id": history[1]["id"]},
                      headers=ops["headers"]).get_json()
    assert [e["id"] for e in page] == [e["id"] for e in history[2:]]
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    none = client.get("/api/v1/audit", query_string={"since": later}, headers=ops["headers"])
    assert none.get_json() == []
    everything = client.get("/api/v1/audit", query_string={"until": later},
                            headers=ops["headers"])
    assert len(everything.get_json()) == len(history)


def test_audit_is_for_operators_only(client, register, readonly_headers):
    assert client.get("/api/v1/audit", headers=readonly_headers).status_code == 200
    agent = register(new_agent_id())
    assert_error(client.get("/api/v1/audit", headers=bearer(agent["access_token"])), 403,
                 "forbidden")
    assert_error(client.get("/api/v1/audit"), 401, "missing_token")
    assert_error(client.get("/api/v1/audit?limit=0", headers=readonly_headers), 422,
                 "invalid_fields", mentions="limit")


# --- the CLI -----------------------------------------------------------------------------


def test_cli_token_changes_are_audited(tmp_path, monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("AAMI_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AAMI_DATA_DIR", str(tmp_path / "var"))
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, list(args))
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result.stdout.strip().splitlines()[-1]

    bootstrap = run("token", "create", "--name", "web", "--max-uses", "3")
    admin = run("admin-token", "create", "--name", "robot", "--role", "read-only")
    run("token", "revoke", bootstrap[:14])
    run("admin-token", "revoke", admin[:14])
    run("ca", "init")
    run("ca", "issue-agent", "--agent-id", new_agent_id(), "--out-dir", str(tmp_path / "a"))

    from server import create_app

    app = create_app({"LOG_LEVEL": "warning"})
    rows = _rows(app)
    assert [r.action for r in rows] == [
        "bootstrap_token.create",
        "admin_token.create",
        "bootstrap_token.revoke",
        "admin_token.revoke",
        "ca.init",
        "certificate.issue",
    ]
    assert all(re.fullmatch(r"cli:.+", r.actor) for r in rows)
    assert rows[1].details == {"name": "robot", "role": "read-only", "prefix": admin[:14]}
    text = repr([(r.subject, r.details) for r in rows])
    assert bootstrap not in text and admin not in text
