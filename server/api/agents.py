"""Agent-facing heartbeat."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint

from server.api import schemas
from server.api.routing import route
from server.db import db_session
from server.extensions import event_sinks, redis_client, settings
from server.services import clones, commands, liveness
from server.services.assignments import config_version, target_and_serial
from server.services.targets import transition_status

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
    # One query: the target and the policy serial its (cached) assignment is filed under.
    target, serial = target_and_serial(session, agent_id)
    # The database is done with unless the status changes: let the connection go.
    session.commit()
    facts = {k: v for k, v in body.items() if v is not None}
    instance_id = body.get("instance_id")
    known_status, pending, previous_instance = liveness.beat(
        client, agent_id, facts, instance_id
    )
    try:
        if known_status != "online":
            # Only transitions reach the database; Redis remembers the rest.
            event = transition_status(session, agent_id, "online", when=datetime.now(UTC))
            if event is not None:
                session.commit()
                event_sinks().announce([event])
            liveness.remember_status(client, agent_id, "online")
        if instance_id:
            clones.check_instance(client, session, agent_id, previous_instance, instance_id)
    except Exception:
        # This reply will not carry the commands taken above: keep them for the next.
        commands.give_back(client, agent_id, pending)
        raise
    return {
        "config_version": config_version(session, target, serial),
        "heartbeat_interval": settings().HEARTBEAT_INTERVAL,
        "server_time": datetime.now(UTC),
        "commands": pending,
    }
