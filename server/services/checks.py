"""Checks and their assignment to targets (by id, group or label)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.errors import Conflict, InvalidFields, NotFound
from server.models import Check, CheckAssignment, Target
from server.services.assignments import assigned_check_ids, assignment_for
from server.services.policy import current_serial

CHECK_FIELDS = ("name", "command", "shell", "limits", "env", "enabled", "maintenance")


def validate_command(command: list[str], shell: bool) -> None:
    """A plugin is an absolute path plus arguments; a shell check is one command line."""
    if shell and len(command) != 1:
        raise InvalidFields(
            "a shell check's command is one command line: [\"df -h / | tail -1\"]",
            fields={"command": ["must hold exactly one shell command line"]},
        )
    if not shell and not command[0].startswith("/"):
        raise InvalidFields(
            "command[0] must be an absolute path to the plugin",
            fields={"command": ["command[0] must be an absolute path"]},
        )


def _validate_against_stored(check: Check, changes: dict[str, Any]) -> None:
    """A PATCH that sends one of command and shell is checked with the other as stored:
    refused, it conflicts with the stored check (409) rather than being malformed."""
    try:
        validate_command(list(check.command), bool(check.shell))
    except InvalidFields as exc:
        if {"command", "shell"} <= changes.keys():
            raise
        stored = "shell flag" if "command" in changes else "command"
        raise Conflict(
            f"{exc.message}, and the check's stored {stored} says otherwise: send command "
            "and shell together",
            code="conflicts_with_stored_check",
            fields=exc.fields,
        ) from None


def _assignments_from(assign: dict[str, Any]) -> list[CheckAssignment]:
    rows = [CheckAssignment(target_id=str(t)) for t in assign.get("target_ids", [])]
    rows += [CheckAssignment(group_id=g) for g in assign.get("group_ids", [])]
    rows += [
        CheckAssignment(label_key=k, label_value=v) for k, v in assign.get("labels", {}).items()
    ]
    return rows


def describe_assignment(check: Check) -> dict[str, Any]:
    return {
        "target_ids": sorted(a.target_id for a in check.assignments if a.target_id),
        "group_ids": sorted(a.group_id for a in check.assignments if a.group_id),
        "labels": {
            a.label_key: a.label_value for a in check.assignments if a.label_key is not None
        },
    }


def check_to_dict(check: Check, *, with_assignment: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": check.id,
        "name": check.name,
        "command": list(check.command),
        "interval": check.interval_s,
        "timeout": check.timeout_s,
        "limits": {k: v for k, v in (check.limits or {}).items() if v is not None},
        "env": dict(check.env or {}),
        "shell": bool(check.shell),
        "enabled": check.enabled,
        "maintenance": check.maintenance,
    }
    if with_assignment:
        data["assign"] = describe_assignment(check)
        data["updated_at"] = check.updated_at
    return data


def create_check(session: Session, data: dict[str, Any]) -> Check:
    if session.get(Check, data["id"]) is not None:
        raise Conflict(
            f"check {data['id']!r} already exists: change it with PATCH /api/v1/checks/{data['id']}"
        )
    validate_command(data["command"], data.get("shell", False))
    check = Check(
        id=data["id"],
        name=data.get("name") or data["id"],
        command=list(data["command"]),
        interval_s=data["interval"],
        timeout_s=data["timeout"],
        limits=dict(data.get("limits") or {}),
        env=dict(data.get("env") or {}),
        shell=data.get("shell", False),
        enabled=data.get("enabled", True),
        maintenance=data.get("maintenance", False),
    )
    check.assignments = _assignments_from(data.get("assign") or {})
    session.add(check)
    session.flush()
    return check


def get_check(session: Session, check_id: str) -> Check:
    check = session.get(Check, check_id)
    if check is None:
        raise NotFound(f"no check with id {check_id!r}")
    return check


def update_check(session: Session, check_id: str, changes: dict[str, Any]) -> Check:
    check = get_check(session, check_id)
    if "name" in changes and not changes["name"]:
        changes = {**changes, "name": check.id}  # as at creation: no name means the id
    for name in CHECK_FIELDS:
        if name in changes:
            setattr(check, name, changes[name])
    if "interval" in changes:
        check.interval_s = changes["interval"]
    if "timeout" in changes:
        check.timeout_s = changes["timeout"]
    _validate_against_stored(check, changes)
    if "assign" in changes:
        check.assignments = _assignments_from(changes["assign"] or {})
    session.flush()
    return check


def delete_check(session: Session, check_id: str) -> None:
    session.delete(get_check(session, check_id))
    session.flush()


def list_checks(session: Session) -> list[Check]:
    return list(session.scalars(select(Check).order_by(Check.id)))


def checks_for_target(session: Session, target: Target) -> list[Check]:
    """Enabled checks assigned to ``target``, by id order (stable for the ETag); the
    same rules as the agent's assignment (server/services/assignments.py)."""
    assigned = assigned_check_ids(session, target, current_serial(session))
    return [c for c in list_checks(session) if c.id in assigned]


def agent_assignment(session: Session, target: Target) -> dict[str, Any]:
    """What ``GET /checks/target/{id}`` returns, with its version (the ETag); from the
    per-process cache of the current policy serial (server/services/assignments.py)."""
    return assignment_for(session, target, current_serial(session))
