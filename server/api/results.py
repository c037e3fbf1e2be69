"""Agent-facing result intake: validate, queue the batch in Redis, answer 202."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from server.api import schemas
from server.api.routing import route
from server.db import db_session
from server.errors import InvalidFields
from server.extensions import job_queues, settings
from server.jobs import backlog
from server.services.checks import checks_for_target
from server.services.targets import get_target

bp = Blueprint("results", __name__, url_prefix="/api/v1")


@route(
    bp,
    "/agents/<agent_id>/check-results",
    "POST",
    summary="Submit a batch of check results; 202 once the batch is queued for ingestion",
    body=schemas.ResultBatch,
    reply=schemas.ResultBatchReply,
    status=202,
    auth="agent",
)
def submit_results(agent_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    results = body["results"]
    if len(results) > settings().MAX_RESULTS_PER_BATCH:
        raise InvalidFields(
            f"at most {settings().MAX_RESULTS_PER_BATCH} results per batch, got {len(results)}",
            fields={"results": ["too many results"]},
        )
    session = db_session()
    target = get_target(session, agent_id)
    assigned = {c.id for c in checks_for_target(session, target)}
    session.commit()
    accepted, rejected = [], []
    for result in results:
        if result["check_id"] in assigned:
            accepted.append(_job_payload(result))
        else:
            rejected.append(
                {
                    "result_id": str(result["result_id"]),
                    "reason": f"check {result['check_id']!r} is not assigned to this agent",
                }
            )
    job_id = None
    if accepted:
        job_id = backlog.submit(job_queues(), agent_id, accepted)
    return {"job_id": job_id, "accepted": len(accepted), "rejected": rejected}, 202


def _job_payload(result: dict[str, Any]) -> dict[str, Any]:
    """A validated result as plain JSON types for the job (what ``AgentResult().dump``
    gives, at a fraction of the cost: a schema per result made the API CPU-bound)."""
    return {
        **result,
        "result_id": str(result["result_id"]),
        "executed_at": result["executed_at"].isoformat(),
    }
