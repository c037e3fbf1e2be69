"""Checks: admin CRUD, and the agent's assignment with ETag and long-poll."""

from __future__ import annotations

import random
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from server.api import schemas
from server.api.admission import place_given_up
from server.api.audit import audit
from server.api.auth import current_caller
from server.api.fields import format_duration
from server.api.routing import route
from server.db import db_session
from server.extensions import notifier, policy_key, redis_client, settings
from server.services import checks as check_service
from server.services import commands
from server.services.assignments import assignment_for, config_version, target_and_serial
from server.services.audit import changes as audit_changes
from server.services.policy import signed_reply

bp = Blueprint("checks", __name__, url_prefix="/api/v1")


def _changed() -> None:
    db_session().commit()
    notifier().publish()


def _audited(check: dict[str, Any]) -> dict[str, Any]:
    """What the audit log keeps of a check: environment values may be credentials."""
    kept = {k: v for k, v in check.items() if k not in ("env", "updated_at")}
    kept["env_keys"] = sorted(check.get("env") or {})
    for name in ("interval", "timeout"):
        kept[name] = format_duration(kept[name])  # as the API spells them
    return kept


@route(bp, "/checks", "GET", summary="List checks", reply=schemas.CheckReply, reply_many=True)
def list_checks() -> list[dict[str, Any]]:
    return [check_service.check_to_dict(c) for c in check_service.list_checks(db_session())]


@route(
    bp,
    "/checks",
    "POST",
    summary="Create a check and its assignment",
    body=schemas.CheckCreate,
    reply=schemas.CheckReply,
    status=201,
    auth="admin-write",
)
def create_check(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    check = check_service.create_check(db_session(), body)
    described = check_service.check_to_dict(check)
    audit("check.create", check.id, check=_audited(described))
    _changed()
    return described, 201


@route(bp, "/checks/<check_id>", "GET", summary="One check", reply=schemas.CheckReply)
def get_check(check_id: str) -> dict[str, Any]:
    return check_service.check_to_dict(check_service.get_check(db_session(), check_id))


@route(
    bp,
    "/checks/<check_id>",
    "PATCH",
    summary="Change a check (only the fields sent); agents pick it up at once",
    body=schemas.CheckUpdate,
    reply=schemas.CheckReply,
    auth="admin-write",
)
def update_check(check_id: str, body: dict[str, Any]) -> dict[str, Any]:
    before = _audited(check_service.check_to_dict(check_service.get_check(db_session(), check_id)))
    check = check_service.update_check(db_session(), check_id, body)
    described = check_service.check_to_dict(check)
    audit("check.update", check.id, changes=audit_changes(before, _audited(described)))
    _changed()
    return described


@route(bp, "/checks/<check_id>", "DELETE", summary="Delete a check", status=204, auth="admin-write")
def delete_check(check_id: str) -> Response:
    check_service.delete_check(db_session(), check_id)
    audit("check.delete", check_id)
    _changed()
    return Response(status=204)


def _etag_matches(version: str) -> bool:
    # Weak comparison (RFC 9110): a compressing proxy turns our ETag into W/"...".
    return request.if_none_match.contains_weak(version)


@route(
    bp,
    "/checks/target/<agent_id>",
    "GET",
    summary="Checks assigned to a target, with ETag; ?wait=N long-polls for a change",
    query=schemas.WaitQuery,
    reply=schemas.AgentChecksReply,
    auth="agent-or-admin",
    extra_statuses={304: "the assignment still matches If-None-Match"},
)
def assigned_checks(agent_id: str, query: dict[str, Any]) -> Response:
    session = db_session()
    wait = min(query["wait"], settings().LONGPOLL_MAX_WAIT)
    if wait > 0:
        # Jitter spreads expiries so a fleet's polls do not all return in the same second.
        wait *= random.uniform(0.85, 1.0)
    deadline = time.monotonic() + wait
    changes = notifier()
    # Commands are the agent's to take: an operator watching its assignment must not eat them.
    takes_commands = wait > 0 and current_caller().kind == "agent"
    while True:
        generation = changes.generation(agent_id) if wait > 0 else 0
        session.expire_all()
        # Read the target afresh each round: it may have changed, or gone (404), meanwhile.
        # The checks come from the per-process cache of the current policy serial.
        target, serial = target_and_serial(session, agent_id)
        version = config_version(session, target, serial)
        pending = takes_commands and commands.has_commands(redis_client(), agent_id)
        remaining = deadline - time.monotonic()
        # A closing notifier (the process is stopping) returns from wait() at once: answer
        # now rather than spin on the database until the deadline.
        if not _etag_matches(version) or pending or remaining <= 0 or changes.closing:
            break
        # Hand the connection back while parked: a long wait must not pin a pool slot.
        session.commit()
        with place_given_up():  # parked is not working: the place is someone else's
            woken_at = changes.wait(generation, remaining, agent_id)
        if woken_at == generation:
            # Nothing was published while parked (the deadline passed, or the process is
            # stopping): the answer stands, and the next poll starts with a fresh read.
            # Not reading again here halves what a fleet of parked polls costs.
            break
    if _etag_matches(version) and not pending:
        response = Response(status=304)
    else:
        assignment = assignment_for(session, target, serial)
        assignment["commands"] = commands.take_commands(redis_client(), agent_id) if pending else []
        reply = signed_reply(session, assignment, policy_key(), schemas.AgentChecksReply().dump)
        response = jsonify(reply)
    response.set_etag(version)
    response.headers["Cache-Control"] = "no-cache"
    return response
