"""The audit log: who changed what, written in the same transaction as the change.

Rows name the actor (``admin:<token name> (<token id prefix>)``, ``cli:<user>``,
``agent:<id>``), an action (``check.create``, ``target.update``, ``certificate.issue``...),
its subject and details. Details never hold a secret: callers pass only descriptions, and
``record`` scrubs anything that still looks like one (defence in depth).
"""

from __future__ import annotations

import getpass
import re
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import AuditLog

REDACTED = "[redacted]"
_SECRET_KEYS = {"token", "secret", "password", "refresh_token", "access_token", "csr"}
_SECRET_VALUE = re.compile(
    r"aami_(bt|rt|adm)_[A-Za-z0-9_-]{8,}"  # our opaque secrets
    r"|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"  # a JWT
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)


def admin_actor(name: str, token_id: str) -> str:
    return f"admin:{name} ({token_id[:8]})"


def cli_actor() -> str:
    """Who ran an ``aami-server`` command: the local user (the CLI has no token)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return f"cli:{user}"


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            str(k): REDACTED if str(k).lower() in _SECRET_KEYS else _scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value)
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


def record(
    session: Session,
    actor: str,
    action: str,
    subject: str,
    details: dict[str, Any] | None = None,
) -> AuditLog:
    """Add an audit row to ``session``; it commits (or rolls back) with the change."""
    row = AuditLog(
        actor=actor[:200],
        action=action[:64],
        subject=str(subject)[:200],
        details=_scrub(details or {}),
    )
    session.add(row)
    return row


def list_entries(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    subject: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditLog]:
    """Newest first. ``action`` ending in ``.`` matches a family (``check.``)."""
    statement = select(AuditLog)
    if actor:
        statement = statement.where(AuditLog.actor == actor)
    if action:
        if action.endswith("."):
            statement = statement.where(AuditLog.action.startswith(action, autoescape=True))
        else:
            statement = statement.where(AuditLog.action == action)
    if subject:
        statement = statement.where(AuditLog.subject == subject)
    if since is not None:
        statement = statement.where(AuditLog.created_at >= since)
    if until is not None:
        statement = statement.where(AuditLog.created_at < until)
    if before_id is not None:
        statement = statement.where(AuditLog.id < before_id)
    # Ids grow with every insert: newest first, and ``before_id`` pages on from a reply.
    statement = statement.order_by(AuditLog.id.desc()).limit(limit)
    return list(session.scalars(statement))


def changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``{field: {"from": old, "to": new}}`` for the fields that differ."""
    return {
        name: {"from": before.get(name), "to": value}
        for name, value in after.items()
        if before.get(name) != value
    }
