"""Agent-facing result intake: validate, queue the batch in Redis, answer 202."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from flask import Blueprint
from marshmallow import Schema, validate
from marshmallow.utils import from_iso_datetime

from server.api import schemas
from server.api.fields import SLUG
from server.api.routing import route
from server.api.storable import unstorable_reason
from server.db import db_session
from server.errors import InvalidFields
from server.extensions import job_queues, settings
from server.jobs import backlog
from server.jobs.clock_window import ClockWindow
from server.models import utcnow
from server.services.assignments import assigned_check_ids, target_and_serial

bp = Blueprint("results", __name__, url_prefix="/api/v1")


def _limits(schema: type[Schema], name: str) -> tuple[Any, Any]:
    """(min, max) of a field's Length or Range validator: one source of truth."""
    for check in schema._declared_fields[name].validators:
        if isinstance(check, validate.Length | validate.Range):
            return check.min, check.max
    raise LookupError(f"{schema.__name__}.{name} has no Length or Range validator")


_RESULT_FIELDS = frozenset(
    ("result_id", "check_id", "status", "exit_code", "output", "perfdata", "duration_ms",
     "executed_at")
)
_RESULT_REQUIRED = frozenset(("result_id", "check_id", "status", "exit_code", "executed_at"))
_PERF_FIELDS = frozenset(("label", "value", "uom", "warn", "crit", "min", "max"))
_PERF_NUMBERS = ("value", "min", "max")
_PERF_THRESHOLDS = ("warn", "crit")
_SLUG = cast("re.Pattern[str]", SLUG.regex)
_EXIT_MIN, _EXIT_MAX = _limits(schemas.AgentResult, "exit_code")
_DURATION_MIN, _DURATION_MAX = _limits(schemas.AgentResult, "duration_ms")
_OUTPUT_MAX = _limits(schemas.AgentResult, "output")[1]
_PERF_ITEMS_MAX = _limits(schemas.AgentResult, "perfdata")[1]
_LABEL_MAX = _limits(schemas.Perfdata, "label")[1]
_UOM_MAX = _limits(schemas.Perfdata, "uom")[1]
_THRESHOLD_MAX = schemas.MAX_THRESHOLD_LENGTH
# The fast path knows these fields only: a field added to the schemas turns it off.
_FAST_PATH_CURRENT = (
    set(schemas.ResultBatch._declared_fields) == {"results"}
    and set(schemas.AgentResult._declared_fields) == _RESULT_FIELDS
    and set(schemas.Perfdata._declared_fields) == _PERF_FIELDS
)


def _fast_result(item: Any) -> dict[str, Any] | None:
    """One result loaded exactly as ``AgentResult`` would load it, or None when it is
    anything but plainly well-formed (marshmallow then decides, and explains)."""
    if type(item) is not dict or not _RESULT_REQUIRED <= item.keys() <= _RESULT_FIELDS:
        return None
    check_id, status, exit_code = item["check_id"], item["status"], item["exit_code"]
    output = item.get("output", "")
    duration_ms = item.get("duration_ms", 0)
    executed_at = item["executed_at"]
    if not (
        type(check_id) is str and _SLUG.match(check_id)
        and type(status) is str and status in schemas.STATUSES
        and type(exit_code) is int and _EXIT_MIN <= exit_code <= _EXIT_MAX
        and type(output) is str and len(output) <= _OUTPUT_MAX
        and unstorable_reason(output) is None
        and type(duration_ms) is int and _DURATION_MIN <= duration_ms <= _DURATION_MAX
        and type(executed_at) is str and executed_at
        and type(item["result_id"]) is str
    ):
        return None
    perfdata = _fast_perfdata(item.get("perfdata", []))
    if perfdata is None:
        return None
    try:
        result_id = uuid.UUID(item["result_id"])
        when = from_iso_datetime(executed_at)
        if when.tzinfo is None or when.tzinfo.utcoffset(when) is None:
            when = when.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None
    return {
        "result_id": result_id, "check_id": check_id, "status": status,
        "exit_code": exit_code, "output": output, "perfdata": perfdata,
        "duration_ms": duration_ms, "executed_at": when,
    }


def _fast_perfdata(items: Any) -> list[dict[str, Any]] | None:
    if type(items) is not list or len(items) > _PERF_ITEMS_MAX:
        return None
    loaded = []
    for item in items:
        if type(item) is not dict or "label" not in item or not item.keys() <= _PERF_FIELDS:
            return None
        label, uom = item["label"], item.get("uom")
        if type(label) is not str or len(label) > _LABEL_MAX or unstorable_reason(label):
            return None
        if uom is not None and (
            type(uom) is not str or len(uom) > _UOM_MAX or unstorable_reason(uom)
        ):
            return None
        if not all(_fast_threshold(item.get(name)) for name in _PERF_THRESHOLDS):
            return None
        entry = dict(item)
        for name in _PERF_NUMBERS:
            number = item.get(name)
            if number is None:
                continue
            if type(number) is not float and type(number) is not int:
                return None
            try:
                entry[name] = float(number)
            except OverflowError:
                return None
            if not math.isfinite(entry[name]):
                return None
        loaded.append(entry)
    return loaded


def _fast_threshold(value: Any) -> bool:
    if value is None:
        return True
    if type(value) is str:
        return len(value) <= _THRESHOLD_MAX and unstorable_reason(value) is None
    return (type(value) is float or type(value) is int) and schemas.is_finite(value)


class ResultBatch(schemas.ResultBatch):
    """``schemas.ResultBatch`` with a fast path for well-formed batches.

    Marshmallow spends about 100 us per result (most of the API's CPU at a few thousand
    results a second). A batch whose every result is plainly well-formed is loaded here
    by hand, to exactly what the schema would give; anything else (a missing field, a
    string where a number goes, an unknown key) goes through the schema, which decides
    and names the fields. tests/server/test_results_fast_path.py holds the two together.
    """

    def load(self, data: Any, *, many: Any = None, partial: Any = None, unknown: Any = None) -> Any:
        if _FAST_PATH_CURRENT and many is None and partial is None and unknown is None:
            loaded = fast_load(data)
            if loaded is not None:
                return loaded
        return super().load(data, many=many, partial=partial, unknown=unknown)


def fast_load(data: Any) -> dict[str, Any] | None:
    """The fast path alone: the loaded batch, or None to leave it to marshmallow."""
    if type(data) is not dict or data.keys() != {"results"}:
        return None
    items = data["results"]
    if type(items) is not list or not items:
        return None
    results = []
    for item in items:
        loaded = _fast_result(item)
        if loaded is None:
            return None
        results.append(loaded)
    return {"results": results}


@route(
    bp,
    "/agents/<agent_id>/check-results",
    "POST",
    summary="Submit a batch of check results; 202 once the batch is queued for ingestion",
    body=ResultBatch,
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
    target, serial = target_and_serial(session, agent_id)
    assigned = assigned_check_ids(session, target, serial)  # cached per policy serial
    session.commit()
    received_at = utcnow()
    window = ClockWindow.of(settings())
    accepted, rejected = [], []
    for result in results:
        refusal = _refusal(result, assigned, window, received_at)
        if refusal is None:
            accepted.append(result)
        else:
            rejected.append({"result_id": str(result["result_id"]), "reason": refusal})
    # A result dated past the window is stored at received_at (its agent's clock runs ahead).
    window.place(accepted, received_at)
    job_id = None
    if accepted:
        job_id = backlog.submit(job_queues(), agent_id, [_job_payload(r) for r in accepted])
    return {"job_id": job_id, "accepted": len(accepted), "rejected": rejected}, 202


def _refusal(
    result: dict[str, Any], assigned: set[str], window: ClockWindow, received_at: datetime
) -> str | None:
    """Why one result of a batch is refused on its own (the rest is stored), or None."""
    if result["check_id"] not in assigned:
        return f"check {result['check_id']!r} is not assigned to this agent"
    if window.too_old(result["executed_at"], received_at):
        return (
            f"executed_at {result['executed_at'].isoformat()} is older than the retention "
            f"period ({settings().RESULT_RETENTION_DAYS} days) by the server's clock "
            f"({received_at.isoformat(timespec='seconds')}): check the agent's clock"
        )
    return None


def _job_payload(result: dict[str, Any]) -> dict[str, Any]:
    """A validated result as plain JSON types for the job (what ``AgentResult().dump``
    gives, at a fraction of the cost: a schema per result made the API CPU-bound)."""
    payload = {
        **result,
        "result_id": str(result["result_id"]),
        "executed_at": result["executed_at"].isoformat(),
    }
    if result.get("agent_executed_at") is not None:
        payload["agent_executed_at"] = result["agent_executed_at"].isoformat()
    return payload
