"""Retention: results and events older than the retention period are deleted in chunks,
so the database never holds one long lock over a large delete."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, tuple_

from server.jobs import context
from server.models import CheckResult, Event, utcnow

CHUNK = 5000


def _prune_table(
    model: Any, time_column: Any, key_columns: tuple[Any, ...], cutoff: datetime
) -> int:
    removed = 0
    while True:
        oldest = select(*key_columns).where(time_column < cutoff).limit(CHUNK)
        with context.database().session() as session:
            deleted = session.execute(delete(model).where(tuple_(*key_columns).in_(oldest)))
        count: int = deleted.rowcount  # type: ignore[attr-defined]
        removed += count
        if count < CHUNK:
            return removed


def prune(days: int) -> dict[str, int]:
    cutoff = utcnow() - timedelta(days=days)
    return {
        "results": _prune_table(
            CheckResult,
            CheckResult.executed_at,
            (CheckResult.result_id, CheckResult.executed_at),
            cutoff,
        ),
        "events": _prune_table(Event, Event.created_at, (Event.id,), cutoff),
    }
