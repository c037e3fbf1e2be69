"""Ingest a batch of check results: idempotent bulk insert, then current state and events."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from server.jobs import context
from server.jobs.events import record_event
from server.jobs.flapping import HISTORY_LENGTH, is_flapping
from server.metrics import record_ingest
from server.models import Check, CheckResult, CheckState, Target, utcnow

log = logging.getLogger(__name__)


def _insert_ignoring_duplicates(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert rows whose ``result_id`` is new; returns how many were new."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(CheckResult).values(rows).on_conflict_do_nothing()
    inserted = session.execute(statement.returning(CheckResult.result_id))
    return len(inserted.all())


def _parse_time(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def result_rows(agent_id: str, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "result_id": str(r["result_id"]),
            "executed_at": _parse_time(r["executed_at"]),
            "target_id": agent_id,
            "check_id": r["check_id"],
            "status": r["status"],
            "exit_code": r["exit_code"],
            "output": r.get("output", ""),
            "perfdata": r.get("perfdata") or [],
            "duration_ms": r.get("duration_ms", 0),
        }
        for r in results
    ]


def ingest_batch(agent_id: str, results: list[dict[str, Any]]) -> dict[str, int]:
    """Store ``results`` for ``agent_id``; running it twice stores nothing more."""
    rows = result_rows(agent_id, results)
    with context.database().session() as session:
        inserted = _insert_ignoring_duplicates(session, rows) if rows else 0
        update_states(session, agent_id, rows)
    if rows:
        newest = max(r["executed_at"] for r in rows)
        record_ingest(context.redis_client(), inserted, (utcnow() - newest).total_seconds())
    log.info(
        "ingested batch", extra={"agent_id": agent_id, "received": len(rows), "inserted": inserted}
    )
    return {"received": len(rows), "inserted": inserted}


def update_states(session: Session, agent_id: str, rows: list[dict[str, Any]]) -> None:
    """Fold results, oldest first, into each check's current state, raising events."""
    target = session.get(Target, agent_id)
    if target is None:
        return
    states = {
        s.check_id: s
        for s in session.scalars(
            select(CheckState).where(CheckState.target_id == agent_id).with_for_update()
        )
    }
    quiet_checks = set(session.scalars(select(Check.id).where(Check.maintenance.is_(True))))
    for row in sorted(rows, key=lambda r: r["executed_at"]):
        state = states.get(row["check_id"])
        if state is not None and state.executed_at >= row["executed_at"]:
            continue  # late or retried result: it is history, not news
        if state is None:
            state = CheckState(
                target_id=agent_id, check_id=row["check_id"], occurrences=0, history=""
            )
            session.add(state)
            states[row["check_id"]] = state
        quiet = target.maintenance or row["check_id"] in quiet_checks
        _apply(session, state, row, quiet=quiet)


def _apply(session: Session, state: CheckState, row: dict[str, Any], *, quiet: bool) -> None:
    previous = state.status
    changed = previous != row["status"]
    state.history = ((state.history or "") + row["status"][0])[-HISTORY_LENGTH:]
    was_flapping = bool(state.flapping)
    state.flapping = is_flapping(state.history, was_flapping)
    if changed:
        state.since = row["executed_at"]
        state.occurrences = 1
    else:
        state.occurrences = (state.occurrences or 0) + 1
    state.status = row["status"]
    state.exit_code = row["exit_code"]
    state.output = row["output"]
    state.perfdata = row["perfdata"]
    state.executed_at = row["executed_at"]
    state.last_result_id = row["result_id"]
    if quiet:
        return
    key = f"{state.target_id}:{state.check_id}:{row['result_id']}"
    if state.flapping != was_flapping:
        record_event(
            session,
            kind="flapping",
            target_id=state.target_id,
            check_id=state.check_id,
            previous="flapping" if was_flapping else "stable",
            current="flapping" if state.flapping else "stable",
            message=f"{state.check_id} {'started' if state.flapping else 'stopped'} flapping",
            dedupe_key=f"flap:{key}",
        )
    elif changed and not state.flapping:
        record_event(
            session,
            kind="check_state",
            target_id=state.target_id,
            check_id=state.check_id,
            previous=previous,
            current=row["status"],
            message=row["output"][:500],
            dedupe_key=f"state:{key}",
        )
