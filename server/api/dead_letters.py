"""Result batches set aside by ingestion (server/jobs/dead_letters.py): list, inspect,
replay and drop them."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from server.api import schemas
from server.api.audit import audit
from server.api.routing import route
from server.db import db_session
from server.extensions import job_queues
from server.jobs import backlog, dead_letters

bp = Blueprint("dead_letters", __name__, url_prefix="/api/v1")


@route(
    bp,
    "/ingest/dead-letters",
    "GET",
    summary="Result batches set aside because they could not be stored, oldest first",
    query=schemas.DeadLetterQuery,
    reply=schemas.DeadLetterReply,
    reply_many=True,
)
def list_dead_letters(query: dict[str, Any]) -> list[dict[str, Any]]:
    letters = dead_letters.list_letters(db_session(), limit=query["limit"], offset=query["offset"])
    return [dead_letters.describe(letter) for letter in letters]


@route(
    bp,
    "/ingest/dead-letters/<letter_id>",
    "GET",
    summary="One set-aside result batch, with the batch as it was queued",
    reply=schemas.DeadLetterReply,
)
def show_dead_letter(letter_id: str) -> dict[str, Any]:
    letter = dead_letters.get_letter(db_session(), letter_id)
    return dead_letters.describe(letter, with_batch=True)


@route(
    bp,
    "/ingest/dead-letters/<letter_id>/replay",
    "POST",
    summary="Queue a set-aside batch for storing again; one that still fails is set aside again",
    reply=schemas.DeadLetterReplayReply,
    auth="admin-write",
)
def replay_dead_letter(letter_id: str) -> dict[str, Any]:
    described, outcome = backlog.replay(db_session(), job_queues(), letter_id)
    _audit_and_commit("dead_letter.replay", letter_id, described, outcome=outcome)
    return {"dead_letter": described, "outcome": outcome}


@route(
    bp,
    "/ingest/dead-letters/<letter_id>",
    "DELETE",
    summary="Drop a set-aside batch for good (its results are never stored)",
    reply=schemas.DeadLetterReply,
    auth="admin-write",
)
def drop_dead_letter(letter_id: str) -> dict[str, Any]:
    described = dead_letters.describe(dead_letters.drop(db_session(), letter_id))
    _audit_and_commit("dead_letter.drop", letter_id, described, error=described["error"])
    return described


def _audit_and_commit(
    action: str, letter_id: str, described: dict[str, Any], **details: Any
) -> None:
    """Audit an operator's act on a set-aside batch, naming whose results it held."""
    audit(action, letter_id, agent_id=described["agent_id"],
          results=described["results"], **details)
    db_session().commit()
