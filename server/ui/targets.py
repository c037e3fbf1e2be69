"""One target: its checks with output and performance data, plots, events; operator
actions (force a check, maintenance on/off) and the page's live feed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from server.db import db_session
from server.errors import BadRequest, Conflict
from server.extensions import notifier, redis_client
from server.models import Event
from server.services import commands
from server.services import targets as target_service
from server.services.checks import checks_for_target
from server.ui import plots, queries
from server.ui.formatting import iso, perf_items, status_json, status_label
from server.ui.session import audit, require_write

bp = Blueprint("targets", __name__, url_prefix="/targets")


@bp.get("/<target_id>")
def show(target_id: str) -> ResponseReturnValue:
    session = db_session()
    target = target_service.get_target(session, target_id)
    lines = queries.check_lines(session, target)
    histories = {
        line.check_id: queries.result_history(session, target.id, line.check_id) for line in lines
    }
    now = datetime.now(UTC)

    # The performance plot: ``?plot=CHECK:LABEL`` as chosen in the form, else the first
    # value of the first check (worst first) that reports any numbers.
    with_numbers = {cid: plots.perf_labels(rs) for cid, rs in histories.items()}
    with_numbers = {cid: labels for cid, labels in with_numbers.items() if labels}
    plot_check, _, plot_label = request.args.get("plot", "").partition(":")
    if plot_check not in with_numbers:
        plot_check = next((line.check_id for line in lines if line.check_id in with_numbers), "")
    plot_labels = with_numbers.get(plot_check, [])
    if plot_label not in plot_labels:
        plot_label = plot_labels[0] if plot_labels else ""
    chart = plots.perf_chart(histories[plot_check], plot_label) if plot_check else None

    last_seen = queries.last_seen_of(redis_client(), [target])[target.id]
    return render_template(
        "ui/target.html",
        target=target,
        last_seen=last_seen,
        lines=lines,
        timeline=plots.status_timeline(histories, now),
        chart=chart,
        plot_choices=with_numbers,
        plot_check=plot_check,
        plot_label=plot_label,
        events=queries.recent_events(session, target.id),
        live_url=url_for("ui.targets.live", target_id=target.id),
        now=now,
    )


def _event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "created_at": iso(event.created_at),
        "kind": event.kind,
        "check_id": event.check_id,
        "previous": event.previous,
        "previous_label": status_label(event.previous),
        "current": event.current,
        "current_label": status_label(event.current),
        "message": event.message,
    }


@bp.get("/<target_id>/state.json")
def live(target_id: str) -> ResponseReturnValue:
    """What the target page's script needs to refresh states and events in place."""
    session = db_session()
    target = target_service.get_target(session, target_id)
    last_seen = queries.last_seen_of(redis_client(), [target])[target.id]
    return jsonify(
        {
            "server_time": iso(datetime.now(UTC)),
            "target": {
                "id": target.id,
                **status_json(target.status),
                "maintenance": target.maintenance,
                "last_seen": iso(last_seen),
            },
            "checks": [
                {
                    "check_id": line.check_id,
                    **status_json(line.status),
                    "output": line.state.output if line.state else "",
                    "perfdata": perf_items(line.state.perfdata) if line.state else [],
                    "executed_at": iso(line.state.executed_at) if line.state else None,
                    "since": iso(line.state.since) if line.state else None,
                    "flapping": bool(line.state.flapping) if line.state else False,
                }
                for line in queries.check_lines(session, target)
            ],
            "events": [_event_json(e) for e in queries.recent_events(session, target.id)],
        }
    )


@bp.post("/<target_id>/checks/<check_id>/run")
def run_check(target_id: str, check_id: str) -> ResponseReturnValue:
    """Force a check now: the same command ``POST /api/v1/.../run`` queues."""
    require_write()
    session = db_session()
    target = target_service.get_target(session, target_id)
    if check_id not in {c.id for c in checks_for_target(session, target)}:
        raise Conflict(f"check {check_id!r} is not assigned to {target.hostname}")
    # Recorded before the command is queued, as the API does: nothing runs unlogged.
    audit("check.force_run", target.id, check_id=check_id)
    session.commit()
    commands.queue_command(redis_client(), target.id, {"type": "run_check", "check_id": check_id})
    flash(f"Asked {target.hostname} to run {check_id} now.", "success")
    return redirect(url_for("ui.targets.show", target_id=target.id) + f"#check-{check_id}")


@bp.post("/<target_id>/maintenance")
def set_maintenance(target_id: str) -> ResponseReturnValue:
    """Maintenance on or off, as the form says (idempotent, unlike a blind toggle)."""
    require_write()
    choice = request.form.get("maintenance")
    if choice not in ("on", "off"):
        raise BadRequest("say maintenance=on or maintenance=off")
    wanted = choice == "on"
    session = db_session()
    before = target_service.get_target(session, target_id).maintenance
    target = target_service.update_target(session, target_id, {"maintenance": wanted})
    if before != wanted:
        audit("target.update", target.id, changes={"maintenance": {"from": before, "to": wanted}})
    session.commit()
    notifier().publish(target.id)
    word = "is now in maintenance" if wanted else "is out of maintenance"
    flash(f"{target.hostname} {word}.", "success")
    return redirect(url_for("ui.targets.show", target_id=target.id))
