"""Agent-facing registration and token refresh."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from server.api import schemas
from server.api.auth import jwt_config
from server.api.routing import route
from server.db import db_session
from server.extensions import settings
from server.services import credentials
from server.services.registration import register_agent

bp = Blueprint("registration", __name__, url_prefix="/api/v1")


@route(
    bp,
    "/bootstrap-tokens/register",
    "POST",
    summary="Register an agent with a bootstrap token (201 new target, 200 existing)",
    body=schemas.RegisterRequest,
    reply=schemas.RegisterReply,
    status=201,
    auth="bootstrap",
    extra_statuses={200: "an existing target was connected", 409: "agent id in use"},
)
def register(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    session = db_session()
    registration = register_agent(session, jwt_config(), settings().REFRESH_TOKEN_TTL, body)
    session.commit()
    reply = {
        "agent_id": registration.agent_id,
        "heartbeat_interval": settings().HEARTBEAT_INTERVAL,
        **registration.tokens.as_reply(),
    }
    return reply, 201 if registration.created else 200


@route(
    bp,
    "/agents/<agent_id>/token",
    "POST",
    summary="Exchange a refresh token for a new access token (the refresh token rotates)",
    body=schemas.RefreshRequest,
    reply=schemas.TokenPair,
    auth="bootstrap",
)
def refresh_token(agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
    session = db_session()
    pair = credentials.rotate(
        session, jwt_config(), agent_id, body["refresh_token"], settings().REFRESH_TOKEN_TTL
    )
    session.commit()
    return pair.as_reply()
