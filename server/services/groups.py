"""Groups as other records refer to them."""

from __future__ import annotations

from sqlalchemy.orm import Session

from server.errors import Conflict
from server.models import Group


def require_group(session: Session, group_id: str | None) -> None:
    """Refuse a reference to a group that does not exist (409: the same request succeeds
    once an operator creates the group, so it conflicts with the stored state rather than
    being malformed)."""
    if group_id is not None and session.get(Group, group_id) is None:
        raise Conflict(
            f"group {group_id!r} does not exist: create it first (POST /api/v1/groups)",
            code="unknown_group",
            fields={"group_id": ["unknown group"]},
        )
