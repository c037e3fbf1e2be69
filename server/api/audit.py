"""The audit log: read it (``GET /api/v1/audit``), and record admin changes from views."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from server.api import schemas
from server.api.auth import current_caller
from server.api.routing import route
from server.db import db_session
from server.models import AuditLog
from server.services import audit as audit_service

bp = Blueprint("audit", __name__, url_prefix="/api/v1")


def audit(action: str, subject: str, **details: Any) -> None:
    """Record the current caller's change in the request's session (committed with it)."""
    audit_service.record(db_session(), current_caller().actor, action, subject, details)


@route(
    bp,
    "/audit",
    "GET",
    summary="Audit log of admin changes, newest first (filter by actor, action, subject, time)",
    query=schemas.AuditQuery,
    reply=schemas.AuditReply,
    reply_many=True,
)
def list_audit(query: dict[str, Any]) -> list[AuditLog]:
    return audit_service.list_entries(db_session(), **query)
