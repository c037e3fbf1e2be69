"""Ingest a batch of check results: idempotent bulk insert, then current state and events."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from server.jobs import context
from server.models import CheckResult, CheckState, Event, Target

log = logging.getLogger(__name__)


def _insert_ignoring_duplicates(session: Session, rows: list[dict[str, Any]]) -> int:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(CheckResult).values(rows).on_conflict_do_nothing()
    if dialect == "postgresql":
        inserted = session.execute(statement.returning(CheckResult.result_id))
        return len(inserted.all())
    return session.execute(statement).rowcount  # type: ignore[attr-defined]


def _parse_time(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def ingest_batch(agent_id: str, results: list[dict[str, Any]]) -> dict[str, int]:
    """Store ``results`` for ``agent_id``; running it twice stores nothing more."""
    rows = [
        {
            "result_id": r["result_id"],
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
    with context.database().session() as session:
        inserted = _insert_ignoring_duplicates(session, rows) if rows else 0
        _update_states(session, agent_id, sorted(rows, key=lambda r: r["executed_at"]))
    log.info(
        "ingested batch", extra={"agent_id": agent_id, "received": len(rows), "inserted": inserted}
    )
    return {"received": len(rows), "inserted": inserted}


def _update_states(session: Session, agent_id: str, rows: list[dict[str, Any]]) -> None:
    target = session.get(Target, agent_id)
    if target is None:
        return
    states = {
        s.check_id: s
        for s in session.scalars(select(CheckState).where(CheckState.target_id == agent_id))
    }
    for row in rows:
        state = states.get(row["check_id"])
        if state is not None and state.executed_at >= row["executed_at"]:
            continue  # an older result arriving late, or a retried one: history only
        if state is None:
            state = CheckState(
                target_id=agent_id,
                check_id=row["check_id"],
                since=row["executed_at"],
                occurrences=0,
                history="",
            )
            session.add(state)
            states[row["check_id"]] = state
            previous = None
        else:
            previous = state.status
        if previous != row["status"]:
            state.since = row["executed_at"]
            state.occurrences = 1
            if not target.maintenance:
                session.add(
                    Event(
                        kind="check_state",
                        target_id=agent_id,
                        check_id=row["check_id"],
                        previous=previous,
                        current=row["status"],
                        message=row["output"][:500],
                        dedupe_key=f"state:{row['result_id']}",
                    )
                )
        else:
            state.occurrences = (state.occurrences or 0) + 1
        state.status = row["status"]
        state.exit_code = row["exit_code"]
        state.output = row["output"]
        state.perfdata = row["perfdata"]
        state.executed_at = row["executed_at"]
        state.last_result_id = row["result_id"]
        state.history = ((state.history or "") + row["status"][0])[-21:]
