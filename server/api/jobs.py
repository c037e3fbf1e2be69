"""Background job status (``GET /api/v1/jobs/{id}``), from RQ."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from server.api import schemas
from server.api.routing import route
from server.errors import NotFound
from server.extensions import job_queues

bp = Blueprint("jobs", __name__, url_prefix="/api/v1")


@route(bp, "/jobs/<job_id>", "GET", summary="State of a background job", reply=schemas.JobReply)
def get_job(job_id: str) -> dict[str, Any]:
    job = job_queues().fetch(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r} (finished jobs are kept for an hour)")
    status = job.get_status(refresh=True)
    state = status.value if status is not None else "unknown"
    error = None
    if state == "failed":
        latest = job.latest_result()
        if latest is not None and latest.exc_string:
            error = latest.exc_string.strip().splitlines()[-1]
    return {
        "id": job.id,
        "status": state,
        "queue": job.origin,
        "enqueued_at": job.enqueued_at,
        "ended_at": job.ended_at,
        "result": job.return_value() if state == "finished" else None,
        "error": error,
    }
