"""Store check results: idempotent bulk insert, then current state and events.

:func:`store` takes any number of batches (from ``backlog.drain``) and writes them in one
transaction: one INSERT ... ON CONFLICT DO NOTHING for every row, then one pass over the
check states of the targets involved. :func:`ingest_batch` is the same for a single batch,
kept as a job for batches queued by an earlier version.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import insert, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from server.jobs import context, sinks
from server.jobs.clock_window import ClockWindow
from server.jobs.events import NewEvent, record_events
from server.jobs.state_fold import STATE_COLUMNS, StateFold
from server.models import Check, CheckResult, CheckState, Event, Target, utcnow

log = logging.getLogger(__name__)

# Read by /metrics (server.metrics) at scrape time, written here by whichever worker stored.
RESULTS_INGESTED_KEY = "aami:metrics:results_ingested"
INGEST_LAG_KEY = "aami:metrics:ingest_lag_seconds"

Batch = tuple[str, list[dict[str, Any]]]  # (agent id, results as the API accepted them)

# Two drain jobs may fold results of the same target at once: the row locks serialise
# them, and the loser of a race to create the same new state row (a unique violation) or
# of a deadlock simply runs its transaction again. Everything it writes is idempotent.
STORE_ATTEMPTS = 5
_RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock detected

# One statement for any number of rows, whose parameter is a single JSON document that
# PostgreSQL unpacks itself: binding ten values per row (or ten arrays) costs the worker
# several times more CPU than the database spends inserting.
_PG_INSERT = text(
    """
    INSERT INTO check_results (result_id, executed_at, target_id, check_id, status,
                               exit_code, output, perfdata, duration_ms, received_at,
                               agent_executed_at)
    SELECT r.result_id, r.executed_at, r.target_id, r.check_id, r.status,
           r.exit_code, r.output, r.perfdata, r.duration_ms, now(), r.agent_executed_at
    FROM json_to_recordset(CAST(:rows AS json)) AS r(
        result_id text, executed_at timestamptz, target_id text, check_id text,
        status text, exit_code smallint, output text, perfdata json, duration_ms integer,
        agent_executed_at timestamptz)
    ON CONFLICT DO NOTHING
    RETURNING result_id
    """
)
# SQLite (the embedded default) caps bound parameters per statement at 999 in old builds;
# a row binds 12 (received_at included).
_SQLITE_ROWS_PER_INSERT = 80
# One transaction-scoped lock per result id placed at its receive time (see below).
_PG_LOCK_RESULT_IDS = text(
    "SELECT pg_advisory_xact_lock(hashtextextended(id, 0)) "
    "FROM (SELECT unnest(CAST(:ids AS text[])) AS id ORDER BY 1) AS ids"
)


class UnstorableResult(ValueError):
    """A result no database can store, found before anything is written."""


def _insert_ignoring_duplicates(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert rows whose ``result_id`` is new; returns how many were new."""
    if session.get_bind().dialect.name == "postgresql":
        document = json.dumps(
            [{**r, "executed_at": r["executed_at"].isoformat(),
              "agent_executed_at": _iso_or_none(r["agent_executed_at"])} for r in rows],
            separators=(",", ":"),
        )
        return len(session.execute(_PG_INSERT, {"rows": document}).all())
    inserted = 0
    for start in range(0, len(rows), _SQLITE_ROWS_PER_INSERT):
        chunk = rows[start : start + _SQLITE_ROWS_PER_INSERT]
        statement = sqlite.insert(CheckResult).values(chunk).on_conflict_do_nothing()
        inserted += len(session.execute(statement.returning(CheckResult.result_id)).all())
    return inserted


def _without_placed_duplicates(
    session: Session, rows_by_agent: dict[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """``rows_by_agent`` less the placed rows (``agent_executed_at`` set) already stored.

    The key is ``(result_id, executed_at)`` and a placed row's ``executed_at`` is the
    time the server received it, which differs when the agent sends the batch again: the
    ON CONFLICT of the insert would not see the copy. Such rows are few (agents whose clock
    runs ahead), so they are looked up by ``result_id``, under a lock per id on PostgreSQL
    so that two jobs storing the same retried result cannot both find it new.
    """
    placed = sorted(
        {r["result_id"] for rows in rows_by_agent.values() for r in rows
         if r["agent_executed_at"] is not None}
    )
    if not placed:
        return rows_by_agent
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_PG_LOCK_RESULT_IDS, {"ids": placed})
    stored = set(
        session.scalars(select(CheckResult.result_id).where(CheckResult.result_id.in_(placed)))
    )
    return {
        agent_id: [
            r for r in rows if r["agent_executed_at"] is None or r["result_id"] not in stored
        ]
        for agent_id, rows in rows_by_agent.items()
    }


def _iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def record_ingest(client: redis.Redis, inserted: int, lag_seconds: float) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.incrby(RESULTS_INGESTED_KEY, inserted)
        pipe.set(INGEST_LAG_KEY, f"{lag_seconds:.3f}")
        pipe.execute()


def _parse_time(value: str | datetime, field: str) -> datetime:
    """An aware UTC datetime; a time no database can hold is an :class:`UnstorableResult`
    (queued by a server that did not check, or put on the list by hand)."""
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(
        value.replace("Z", "+00:00")
    )
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise UnstorableResult(f"{field} {value!r} lies outside years 1 to 9999 in UTC") from None


def _unencodable(value: Any, path: str) -> str | None:
    """The path of a string in ``value`` that UTF-8 cannot encode (a lone surrogate, which
    JSON can carry as an escape), or None."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unencodable(key, path) or _unencodable(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _unencodable(item, f"{path}.{index}")
            if found:
                return found
    return None


def _result_row(agent_id: str, result: dict[str, Any]) -> dict[str, Any]:
    row = {
        "result_id": str(result["result_id"]),
        "executed_at": _parse_time(result["executed_at"], "executed_at"),
        "target_id": agent_id,
        "check_id": result["check_id"],
        "status": result["status"],
        "exit_code": result["exit_code"],
        # PostgreSQL text cannot hold NUL; a plugin printing binary must not make the
        # whole batch unstorable.
        "output": result.get("output", "").replace("\x00", "\ufffd"),
        "perfdata": result.get("perfdata") or [],
        "duration_ms": result.get("duration_ms", 0),
        "agent_executed_at": None,
    }
    if result.get("agent_executed_at") is not None:
        row["agent_executed_at"] = _parse_time(result["agent_executed_at"], "agent_executed_at")
    unencodable = _unencodable(row, "result")
    if unencodable:
        raise UnstorableResult(f"{unencodable} of result {row['result_id']} holds a lone surrogate")
    return row


def result_rows(
    agent_id: str, results: list[dict[str, Any]], window: ClockWindow, now: datetime
) -> list[dict[str, Any]]:
    """The rows to store for one batch, placed by ``window`` at ``now`` (a batch queued by
    an earlier server may hold results dated past it)."""
    rows = [_result_row(agent_id, r) for r in results]
    window.place(rows, now)
    return rows


def ingest_batch(agent_id: str, results: list[dict[str, Any]]) -> dict[str, int]:
    """Store ``results`` for ``agent_id``; running it twice stores nothing more."""
    received, inserted = store([(agent_id, results)])
    return {"received": received, "inserted": inserted}


def store(batches: list[Batch]) -> tuple[int, int]:
    """Store ``batches`` in one transaction; returns (results received, rows inserted).

    Safe to run twice, and concurrently with itself: rows already stored are skipped and
    a state never moves back in time.
    """
    window = ClockWindow.of(context.settings())
    now = utcnow()
    rows_by_agent: dict[str, list[dict[str, Any]]] = {}
    for agent_id, results in batches:
        rows_by_agent.setdefault(agent_id, []).extend(
            result_rows(agent_id, results, window, now)
        )
    rows = [row for agent_rows in rows_by_agent.values() for row in agent_rows]
    if not rows:
        return 0, 0
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            with context.database().session() as session:
                fresh = _without_placed_duplicates(session, rows_by_agent)
                inserted = _insert_ignoring_duplicates(
                    session, [row for agent_rows in fresh.values() for row in agent_rows]
                )
                events = update_states(session, fresh, window.latest_trusted_state(now))
            break
        except DBAPIError as exc:
            if attempt == STORE_ATTEMPTS or not _lost_a_race(exc):
                raise
            log.info("store raced another job; retrying", extra={"attempt": attempt})
            time.sleep(0.02 * attempt)
    sinks.announce(events)  # committed: the webhooks may hear of them
    newest = max(r["executed_at"] for r in rows)
    record_ingest(context.redis_client(), inserted, (utcnow() - newest).total_seconds())
    log.info(
        "stored results",
        extra={"batches": len(batches), "received": len(rows), "inserted": inserted},
    )
    return len(rows), inserted


def _lost_a_race(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True  # a concurrent job created the same state row first
    return getattr(exc.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES


def update_states(
    session: Session, rows_by_agent: dict[str, list[dict[str, Any]]], trusted_until: datetime
) -> list[Event]:
    """Fold results, oldest first, into each check's current state; returns the events
    recorded (for the caller to announce once the transaction has committed).

    The states of all targets involved are locked in one statement, in key order, so two
    jobs holding overlapping targets wait for each other instead of deadlocking. States
    are read as plain rows and written back with one bulk UPDATE and one bulk INSERT (a
    new state created by a concurrent job first is a unique violation: the caller runs
    the transaction again); the events of the whole call are recorded together.
    """
    in_maintenance = {
        target_id: maintenance
        for target_id, maintenance in session.execute(
            select(Target.id, Target.maintenance).where(Target.id.in_(rows_by_agent))
        )
    }
    if not in_maintenance:
        return []
    target_ids = sorted(in_maintenance)
    stored = {
        (state.target_id, state.check_id): state
        for state in session.execute(
            select(*STATE_COLUMNS)
            .where(CheckState.target_id.in_(target_ids))
            .order_by(CheckState.target_id, CheckState.check_id)
            .with_for_update()
        )
    }
    quiet_checks = set(session.scalars(select(Check.id).where(Check.maintenance.is_(True))))
    events: list[NewEvent] = []
    updates: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    for target_id in target_ids:
        folds: dict[str, StateFold] = {}
        for row in sorted(rows_by_agent[target_id], key=lambda r: r["executed_at"]):
            check_id = row["check_id"]
            fold = folds.get(check_id)
            if fold is None:
                fold = folds[check_id] = StateFold.of(
                    stored.get((target_id, check_id)), trusted_until
                )
            if not fold.is_news(row):
                continue
            event = fold.apply(target_id, check_id, row)
            if event is not None and not (in_maintenance[target_id] or check_id in quiet_checks):
                events.append(event)
        for check_id, fold in folds.items():
            if fold.changed:
                written = updates if (target_id, check_id) in stored else inserts
                written.append(fold.row(target_id, check_id))
    if updates:
        session.execute(update(CheckState), updates)  # ORM bulk UPDATE by primary key
    if inserts:
        session.execute(insert(CheckState), inserts)
    return record_events(session, events)
