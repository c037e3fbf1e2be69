"""Building and posting check results in server tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from server.db import get_database
from server.models import CheckResult
from tests.server.conftest import bearer

# Recent, inside the window the server accepts (the retention period behind its clock), and
# a whole hour so that offsets from it read plainly in failures.
BASE_TIME = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
EXIT_CODES = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}


def make_result(
    check_id: str, status: str = "ok", seconds: float = 0, **extra: Any
) -> dict[str, Any]:
    result = {
        "result_id": str(uuid.uuid4()),
        "check_id": check_id,
        "status": status,
        "exit_code": EXIT_CODES[status],
        "output": f"{status.upper()} - test output",
        "perfdata": [{"label": "load1", "value": 0.5, "uom": "", "warn": 4.0, "crit": 8.0}],
        "duration_ms": 12,
        "executed_at": (BASE_TIME + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z"),
    }
    result.update(extra)
    return result


def post_results(client: FlaskClient, agent: dict[str, Any], results: list[dict[str, Any]]) -> Any:
    return client.post(
        f"/api/v1/agents/{agent['agent_id']}/check-results",
        json={"results": results},
        headers=bearer(agent["access_token"]),
    )


def create_check(
    client: FlaskClient, admin_headers: dict[str, str], check_id: str, agent_id: str
) -> None:
    reply = client.post(
        "/api/v1/checks",
        json={
            "id": check_id,
            "command": ["/usr/lib/nagios/plugins/check_dummy", "0"],
            "interval": "10s",
            "timeout": "5s",
            "assign": {"target_ids": [agent_id]},
        },
        headers=admin_headers,
    )
    assert reply.status_code == 201, reply.get_json()


def stored_result_ids(app: Flask) -> set[str]:
    """The ids of every result in the database."""
    with get_database(app).session() as session:
        return set(session.scalars(select(CheckResult.result_id)))
