"""The checks defined on the server: command, schedule, assignment, and how they fare."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

from server.db import db_session
from server.services import checks as check_service
from server.ui import queries

bp = Blueprint("checks", __name__, url_prefix="/checks")


@bp.get("/")
def index() -> ResponseReturnValue:
    session = db_session()
    checks = check_service.list_checks(session)
    return render_template(
        "ui/checks.html",
        checks=checks,
        assignments={c.id: check_service.describe_assignment(c) for c in checks},
        summary=queries.state_summary(session),
    )
