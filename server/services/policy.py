"""The policy serial and the signing of what an agent is told to run.

Any change to checks, their assignments, groups, or a target's labels or group bumps the
serial in the same transaction (a session hook, so no code path can forget it).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import event as sa_event
from sqlalchemy import inspect, select, update
from sqlalchemy.orm import Session

from server.models import Check, CheckAssignment, Group, PolicySerial, Target
from server.security.policy import sign_policy

_POLICY_MODELS = (Check, CheckAssignment, Group)
_TARGET_POLICY_FIELDS = ("labels", "agent_labels", "group_id", "group_from_agent")


def _touches_policy(session: Session) -> bool:
    for obj in (*session.new, *session.deleted):
        if isinstance(obj, _POLICY_MODELS):
            return True
    for obj in session.dirty:
        if isinstance(obj, _POLICY_MODELS) and session.is_modified(obj):
            return True
        if isinstance(obj, Target):
            state = inspect(obj)
            if any(state.attrs[name].history.has_changes() for name in _TARGET_POLICY_FIELDS):
                return True
    return False


def _bump_on_policy_change(session: Session, _flush_context: Any, _instances: Any) -> None:
    if _touches_policy(session):
        session.execute(
            update(PolicySerial).where(PolicySerial.id == 1).values(serial=PolicySerial.serial + 1)
        )


def install() -> None:
    if not sa_event.contains(Session, "before_flush", _bump_on_policy_change):
        sa_event.listen(Session, "before_flush", _bump_on_policy_change)


def current_serial(session: Session) -> int:
    return session.scalar(select(PolicySerial.serial).where(PolicySerial.id == 1)) or 0


def signed_reply(
    session: Session,
    assignment: dict[str, Any],
    key: Ed25519PrivateKey | None,
    serialize: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """The reply for an agent: ``assignment`` plus serial and issue time, serialized
    with ``serialize``, then signed. Signing the serialized form is what makes the
    signature cover exactly the bytes' meaning the agent receives (durations as
    strings, not the floats the database holds)."""
    reply = serialize(
        {
            **assignment,
            "serial": current_serial(session),
            "issued_at": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        }
    )
    if key is not None:
        reply["signature"] = sign_policy(key, reply)
    return reply
