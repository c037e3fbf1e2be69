"""Commands for agents: force a check to run now."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from server.api import schemas
from server.api.audit import audit
from server.api.routing import route
from server.db import db_session
from server.errors import Conflict
from server.extensions import redis_client
from server.services import commands
from server.services.checks import checks_for_target
from server.services.targets import get_target

bp = Blueprint("commands", __name__, url_prefix="/api/v1")


@route(
    bp,
    "/targets/<target_id>/checks/<check_id>/run",
    "POST",
    summary="Force a check to run now on its agent (delivered by long-poll or heartbeat)",
    reply=schemas.CommandReply,
    status=202,
    auth="admin-write",
)
def force_check(target_id: str, check_id: str) -> tuple[dict[str, Any], int]:
    session = db_session()
    target = get_target(session, target_id)
    if check_id not in {c.id for c in checks_for_target(session, target)}:
        raise Conflict(f"check {check_id!r} is not assigned to target {target_id}")
    # Recorded before the command is queued: an agent must never run what the log lacks.
    audit("check.force_run", target_id, check_id=check_id)
    session.commit()
    command = commands.queue_command(
        redis_client(), target_id, {"type": "run_check", "check_id": check_id}
    )
    return {**command, "target_id": target_id}, 202
