"""The fleet overview: counts by status, filterable table of targets, and its live feed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, jsonify, render_template, request, url_for
from flask.typing import ResponseReturnValue

from server.db import db_session
from server.extensions import redis_client
from server.services import targets as target_service
from server.ui import queries
from server.ui.formatting import iso, status_json

bp = Blueprint("fleet", __name__)


@bp.get("/")
def overview() -> ResponseReturnValue:
    flt = queries.FleetFilter.from_args(request.args)
    session = db_session()
    rows = queries.fleet_rows(session, redis_client(), flt)
    counts = queries.fleet_counts(session)
    return render_template(
        "ui/overview.html",
        flt=flt,
        rows=rows,
        counts=counts,
        truncated=queries.truncated(counts),
        max_targets=queries.MAX_TARGETS,
        groups=target_service.list_groups(session),
        label_choices=queries.label_choices(session),
        live_url=url_for("ui.fleet.live") + (f"?{urlencode(flt.args())}" if flt.active else ""),
        now=datetime.now(UTC),
    )


def row_json(row: queries.TargetRow) -> dict[str, Any]:
    return {
        "id": row.target.id,
        "hostname": row.target.hostname,
        **status_json(row.target.status),
        "maintenance": row.target.maintenance,
        "last_seen": iso(row.last_seen),
        "checks": {"total": len(row.states), "ok": row.ok_count},
        "failing": [{"check_id": s.check_id, **status_json(s.status)} for s in row.failing],
    }


@bp.get("/fleet.json")
def live() -> ResponseReturnValue:
    """What the overview's script needs to refresh counts and rows in place."""
    flt = queries.FleetFilter.from_args(request.args)
    session = db_session()
    rows = queries.fleet_rows(session, redis_client(), flt)
    return jsonify(
        {
            "server_time": iso(datetime.now(UTC)),
            "counts": queries.fleet_counts(session).as_dict(),
            "targets": [row_json(row) for row in rows],
        }
    )
