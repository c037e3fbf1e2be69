"""State-change events: target status, check state and flapping transitions."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from sqlalchemy import select

from server.api import schemas
from server.api.routing import route
from server.db import db_session
from server.models import Event

bp = Blueprint("events", __name__, url_prefix="/api/v1")


@route(
    bp,
    "/events",
    "GET",
    summary="State-change events, newest first (filter by target, check, kind, since)",
    query=schemas.EventQuery,
    reply=schemas.EventReply,
    reply_many=True,
)
def list_events(query: dict[str, Any]) -> list[Event]:
    statement = select(Event)
    for name in ("target_id", "check_id", "kind"):
        if query.get(name):
            statement = statement.where(getattr(Event, name) == query[name])
    if query.get("since"):
        statement = statement.where(Event.created_at >= query["since"])
    statement = statement.order_by(Event.created_at.desc(), Event.id.desc()).limit(query["limit"])
    return list(db_session().scalars(statement))
