"""Groups of targets: checks can be assigned to a group, bootstrap tokens can join one."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from server.api import schemas
from server.api.audit import audit
from server.api.routing import route
from server.db import db_session
from server.services import targets as target_service

bp = Blueprint("groups", __name__, url_prefix="/api/v1")


@route(bp, "/groups", "GET", summary="List groups", reply=schemas.GroupReply, reply_many=True)
def list_groups() -> list[Any]:
    return target_service.list_groups(db_session())


@route(
    bp,
    "/groups",
    "POST",
    summary="Create a group",
    body=schemas.GroupCreate,
    reply=schemas.GroupReply,
    status=201,
    auth="admin-write",
)
def create_group(body: dict[str, Any]) -> tuple[Any, int]:
    group = target_service.create_group(db_session(), body)
    audit("group.create", group.id, name=group.name, description=group.description)
    db_session().commit()
    return group, 201


@route(bp, "/groups/<group_id>", "GET", summary="One group", reply=schemas.GroupReply)
def get_group(group_id: str) -> Any:
    return target_service.get_group(db_session(), group_id)


@route(bp, "/groups/<group_id>", "DELETE", summary="Delete a group", status=204, auth="admin-write")
def delete_group(group_id: str) -> Response:
    session = db_session()
    session.delete(target_service.get_group(session, group_id))
    audit("group.delete", group_id)
    session.commit()
    return Response(status=204)
