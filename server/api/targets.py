"""Targets: list with status and last seen, pre-register, change, delete, current states."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response
from sqlalchemy import select

from server.api import schemas
from server.api.audit import audit
from server.api.routing import route
from server.db import db_session
from server.extensions import notifier, redis_client
from server.models import CheckResult, CheckState, Target
from server.services import credentials, liveness, registration
from server.services import targets as target_service
from server.services.audit import changes as audit_changes

bp = Blueprint("targets", __name__, url_prefix="/api/v1")


def _describe(targets: list[Target]) -> list[dict[str, Any]]:
    ids = [t.id for t in targets]
    client = redis_client()
    seen = liveness.last_seen(client, ids)
    facts = liveness.facts(client, ids)
    described = []
    for t in targets:
        last = seen.get(t.id)
        described.append(
            {
                "id": t.id,
                "hostname": t.hostname,
                "ip_address": t.ip_address,
                "group_id": t.group_id,
                "labels": t.effective_labels,
                "trusted_labels": t.labels or {},
                "agent_labels": t.agent_labels or {},
                "group_from_agent": bool(t.group_from_agent),
                "metadata": t.attributes or {},
                "status": t.status,
                "last_seen": datetime.fromtimestamp(last, UTC) if last else t.last_seen,
                "agent_version": t.agent_version,
                "maintenance": t.maintenance,
                "registered_at": t.registered_at,
                "facts": facts.get(t.id, {}),
            }
        )
    return described


@route(
    bp,
    "/targets",
    "GET",
    summary="Targets with status (pending/online/stale/offline) and last seen",
    query=schemas.TargetListQuery,
    reply=schemas.TargetReply,
    reply_many=True,
)
def list_targets(query: dict[str, Any]) -> list[dict[str, Any]]:
    return _describe(target_service.list_targets(db_session(), **query))


@route(
    bp,
    "/targets",
    "POST",
    summary="Pre-register a target (its id is the agent's UUID)",
    body=schemas.TargetCreate,
    reply=schemas.TargetReply,
    status=201,
    auth="admin-write",
)
def create_target(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    target = target_service.preregister_target(db_session(), body)
    audit(
        "target.create",
        target.id,
        hostname=target.hostname,
        group_id=target.group_id,
        labels=target.labels,
    )
    db_session().commit()
    return _describe([target])[0], 201


@route(bp, "/targets/<target_id>", "GET", summary="One target", reply=schemas.TargetReply)
def get_target(target_id: str) -> dict[str, Any]:
    return _describe([target_service.get_target(db_session(), target_id)])[0]


@route(
    bp,
    "/targets/<target_id>",
    "PATCH",
    summary="Change hostname, group, labels or maintenance",
    body=schemas.TargetUpdate,
    reply=schemas.TargetReply,
    auth="admin-write",
)
def update_target(target_id: str, body: dict[str, Any]) -> dict[str, Any]:
    target = target_service.get_target(db_session(), target_id)
    before = {name: getattr(target, name) for name in body}
    target = target_service.update_target(db_session(), target_id, body)
    after = {name: getattr(target, name) for name in body}
    audit("target.update", target_id, changes=audit_changes(before, after))
    db_session().commit()
    notifier().publish(target_id)  # group or labels may change what it runs
    return _describe([target])[0]


@route(
    bp,
    "/targets/<target_id>",
    "DELETE",
    summary="Delete a target and revoke its agent's credentials",
    status=204,
    auth="admin-write",
)
def delete_target(target_id: str) -> Response:
    session = db_session()
    target = target_service.get_target(session, target_id)
    credentials.revoke_all(session, target_id, cut_off_access_tokens=False)
    audit("target.delete", target_id, hostname=target.hostname)
    session.delete(target)
    session.commit()
    liveness.forget(redis_client(), target_id)
    notifier().publish(target_id)  # a parked long-poll answers 404 now, not at its deadline
    return Response(status=204)


@route(
    bp,
    "/targets/<target_id>/reset",
    "POST",
    summary="Forget which agent claimed this id and revoke its credentials, so that a rebuilt "
    "host can register under it again (docs/security.md)",
    reply=schemas.TargetReply,
    auth="admin-write",
)
def reset_target_claim(target_id: str) -> dict[str, Any]:
    session = db_session()
    target = registration.reset_claim(session, target_id)
    audit("agent.reset", target_id, hostname=target.hostname)
    session.commit()
    return _describe([target])[0]


@route(
    bp,
    "/targets/<target_id>/checks",
    "GET",
    summary="Current state of each check on a target",
    reply=schemas.CheckStateReply,
    reply_many=True,
)
def target_check_states(target_id: str) -> list[CheckState]:
    session = db_session()
    target_service.get_target(session, target_id)
    return list(
        session.scalars(
            select(CheckState)
            .where(CheckState.target_id == target_id)
            .order_by(CheckState.check_id)
        )
    )


@route(
    bp,
    "/targets/<target_id>/results",
    "GET",
    summary="Result history of a target, newest first",
    query=schemas.ResultQuery,
    reply=schemas.ResultReply,
    reply_many=True,
)
def target_results(target_id: str, query: dict[str, Any]) -> list[CheckResult]:
    session = db_session()
    target_service.get_target(session, target_id)
    statement = select(CheckResult).where(CheckResult.target_id == target_id)
    if query.get("check_id"):
        statement = statement.where(CheckResult.check_id == query["check_id"])
    statement = statement.order_by(CheckResult.executed_at.desc()).limit(query["limit"])
    return list(session.scalars(statement))
