"""Agent-facing heartbeat."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint

from server.api import schemas
from server.api.routing import route
from server.db import db_session
from server.extensions import redis_client, settings
from server.services import commands, liveness
from server.services.checks import agent_assignment
from server.services.targets import get_target, transition_status

bp = Blueprint("agents", __name__, url_prefix="/api/v1")


@route(
    bp,
    "/agents/<agent_id>/heartbeat",
    "POST",
    summary="Report liveness and agent facts; the reply carries config version and commands",
    body=schemas.HeartbeatRequest,
    reply=schemas.HeartbeatReply,
    auth="agent",
)
def heartbeat(agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
    client = redis_client()
    session = db_session()
    # Unknown targets get their 404 before anything is recorded for the sweep to chase.
    target = get_target(session, agent_id)
    facts = {k: v for k, v in body.items() if v is not None}
    known_status = liveness.record_heartbeat(client, agent_id, facts)
    if known_status != "online":
        # Only transitions reach the database; Redis remembers the rest.
        if transition_status(session, agent_id, "online", when=datetime.now(UTC)):
            session.commit()
        liveness.remember_status(client, agent_id, "online")
    return {
        "config_version": agent_assignment(session, target)["config_version"],
        "heartbeat_interval": settings().HEARTBEAT_INTERVAL,
        "server_time": datetime.now(UTC),
        "commands": commands.take_commands(client, agent_id),
    }
