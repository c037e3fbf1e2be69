"""Targets (monitored hosts), groups, and status transitions recorded as events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.errors import Conflict, NotFound
from server.models import Event, Group, Target, new_uuid, utcnow
from server.services.groups import require_group


def get_target(session: Session, target_id: str) -> Target:
    target = session.get(Target, target_id)
    if target is None:
        raise NotFound(f"no target with id {target_id}", code="target_not_found")
    return target


def preregister_target(session: Session, data: dict[str, Any]) -> Target:
    target_id = str(data["id"]) if data.get("id") else new_uuid()
    if session.get(Target, target_id) is not None:
        raise Conflict(f"target {target_id} already exists")
    require_group(session, data.get("group_id"))
    target = Target(
        id=target_id,
        hostname=data["hostname"],
        ip_address=data.get("ip_address"),
        group_id=data.get("group_id"),
        labels=dict(data.get("labels") or {}),
        agent_labels={},
        group_from_agent=False,
        attributes={},
    )
    session.add(target)
    session.flush()
    return target


def update_target(session: Session, target_id: str, changes: dict[str, Any]) -> Target:
    target = get_target(session, target_id)
    if "group_id" in changes:
        require_group(session, changes["group_id"])
        target.group_from_agent = False  # an operator's group is trusted
    for name in ("hostname", "group_id", "labels", "maintenance"):
        if name in changes:
            setattr(target, name, changes[name])
    session.flush()
    return target


def list_targets(
    session: Session,
    *,
    status: str | None = None,
    group_id: str | None = None,
    hostname: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[Target]:
    query = select(Target).order_by(Target.hostname, Target.id)
    if status:
        query = query.where(Target.status == status)
    if group_id:
        query = query.where(Target.group_id == group_id)
    if hostname:
        query = query.where(Target.hostname.contains(hostname))
    return list(session.scalars(query.limit(limit).offset(offset)))


def transition_status(
    session: Session,
    target_id: str,
    new_status: str,
    *,
    when: datetime | None = None,
    only_from: tuple[str, ...] | None = None,
    message: str = "",
) -> Event | None:
    """Move a target to ``new_status`` and record one event, if it was not there already;
    returns that event (the caller announces it to the event sinks once committed).

    The conditional UPDATE makes the move happen once even when two processes (two
    heartbeats, two sweeps) try it at the same moment: only the one that changed the row
    writes the event.
    """
    target = session.get(Target, target_id)
    if target is None or target.status == new_status:
        return None
    previous = target.status
    if only_from is not None and previous not in only_from:
        return None
    moved = session.execute(
        update(Target)
        .where(Target.id == target_id, Target.status == previous)
        .values(status=new_status, last_seen=when or target.last_seen, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return None
    event = Event(
        kind="target_status",
        target_id=target_id,
        previous=previous,
        current=new_status,
        message=message or f"{target.hostname} is {new_status} (was {previous})",
    )
    session.add(event)
    session.flush()
    session.refresh(target)
    return event


def create_group(session: Session, data: dict[str, Any]) -> Group:
    if session.get(Group, data["id"]) is not None:
        raise Conflict(f"group {data['id']!r} already exists")
    group = Group(
        id=data["id"], name=data.get("name") or data["id"], description=data["description"]
    )
    session.add(group)
    session.flush()
    return group


def get_group(session: Session, group_id: str) -> Group:
    group = session.get(Group, group_id)
    if group is None:
        raise NotFound(f"no group with id {group_id!r}")
    return group


def list_groups(session: Session) -> list[Group]:
    return list(session.scalars(select(Group).order_by(Group.id)))
