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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from server.jobs import context
from server.jobs.events import record_event
from server.jobs.flapping import HISTORY_LENGTH, is_flapping
from server.models import Check, CheckResult, CheckState, Target, utcnow

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
                               exit_code, output, perfdata, duration_ms, received_at)
    SELECT r.result_id, r.executed_at, r.target_id, r.check_id, r.status,
           r.exit_code, r.output, r.perfdata, r.duration_ms, now()
    FROM json_to_recordset(CAST(:rows AS json)) AS r(
        result_id text, executed_at timestamptz, target_id text, check_id text,
        status text, exit_code smallint, output text, perfdata json, duration_ms integer)
    ON CONFLICT DO NOTHING
    RETURNING result_id
    """
)
# SQLite (the embedded default) caps bound parameters per statement at 999 in old builds.
_SQLITE_ROWS_PER_INSERT = 90


def _insert_ignoring_duplicates(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert rows whose ``result_id`` is new; returns how many were new."""
    if session.get_bind().dialect.name == "postgresql":
        document = json.dumps(
            [{**r, "executed_at": r["executed_at"].isoformat()} for r in rows],
            separators=(",", ":"),
        )
        return len(session.execute(_PG_INSERT, {"rows": document}).all())
    inserted = 0
    for start in range(0, len(rows), _SQLITE_ROWS_PER_INSERT):
        chunk = rows[start : start + _SQLITE_ROWS_PER_INSERT]
        statement = sqlite.insert(CheckResult).values(chunk).on_conflict_do_nothing()
        inserted += len(session.execute(statement.returning(CheckResult.result_id)).all())
    return inserted


def record_ingest(client: redis.Redis, inserted: int, lag_seconds: float) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.incrby(RESULTS_INGESTED_KEY, inserted)
        pipe.set(INGEST_LAG_KEY, f"{lag_seconds:.3f}")
        pipe.execute()


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
            # PostgreSQL text cannot hold NUL; a plugin printing binary must not make the
            # whole batch unstorable.
            "output": r.get("output", "").replace("\x00", "\ufffd"),
            "perfdata": r.get("perfdata") or [],
            "duration_ms": r.get("duration_ms", 0),
        }
        for r in results
    ]


def ingest_batch(agent_id: str, results: list[dict[str, Any]]) -> dict[str, int]:
    """Store ``results`` for ``agent_id``; running it twice stores nothing more."""
    received, inserted = store([(agent_id, results)])
    return {"received": received, "inserted": inserted}


def store(batches: list[Batch]) -> tuple[int, int]:
    """Store ``batches`` in one transaction; returns (results received, rows inserted).

    Safe to run twice, and concurrently with itself: rows already stored are skipped and
    a state never moves back in time.
    """
    rows_by_agent: dict[str, list[dict[str, Any]]] = {}
    for agent_id, results in batches:
        rows_by_agent.setdefault(agent_id, []).extend(result_rows(agent_id, results))
    rows = [row for agent_rows in rows_by_agent.values() for row in agent_rows]
    if not rows:
        return 0, 0
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            with context.database().session() as session:
                inserted = _insert_ignoring_duplicates(session, rows)
                update_states(session, rows_by_agent)
            break
        except DBAPIError as exc:
            if attempt == STORE_ATTEMPTS or not _lost_a_race(exc):
                raise
            log.info("store raced another job; retrying", extra={"attempt": attempt})
            time.sleep(0.02 * attempt)
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


def update_states(session: Session, rows_by_agent: dict[str, list[dict[str, Any]]]) -> None:
    """Fold results, oldest first, into each check's current state, raising events.

    The states of all targets involved are locked in one statement, in key order, so two
    jobs holding overlapping targets wait for each other instead of deadlocking.
    """
    targets = {
        t.id: t for t in session.scalars(select(Target).where(Target.id.in_(rows_by_agent)))
    }
    if not targets:
        return
    target_ids = sorted(targets)
    states = {
        (s.target_id, s.check_id): s
        for s in session.scalars(
            select(CheckState)
            .where(CheckState.target_id.in_(target_ids))
            .order_by(CheckState.target_id, CheckState.check_id)
            .with_for_update()
        )
    }
    quiet_checks = set(session.scalars(select(Check.id).where(Check.maintenance.is_(True))))
    for target_id in target_ids:
        target = targets[target_id]
        folds: dict[str, _Fold] = {}
        for row in sorted(rows_by_agent[target_id], key=lambda r: r["executed_at"]):
            check_id = row["check_id"]
            fold = folds.get(check_id)
            if fold is None:
                fold = folds[check_id] = _Fold.of(states.get((target_id, check_id)))
            if fold.executed_at is not None and fold.executed_at >= row["executed_at"]:
                continue  # late or retried result: it is history, not news
            quiet = target.maintenance or check_id in quiet_checks
            fold.apply(session, target_id, check_id, row, quiet=quiet)
        for check_id, fold in folds.items():
            if fold.changed:
                state = states.get((target_id, check_id))
                if state is None:
                    state = CheckState(target_id=target_id, check_id=check_id)
                    session.add(state)
                fold.write(state)


@dataclass
class _Fold:
    """A check state being brought forward in plain Python, written to the row once."""

    status: str | None
    exit_code: int | None
    output: str | None
    perfdata: list[dict[str, Any]] | None
    executed_at: datetime | None
    since: datetime | None
    occurrences: int
    history: str
    flapping: bool
    last_result_id: str | None
    changed: bool = False

    @classmethod
    def of(cls, state: CheckState | None) -> _Fold:
        if state is None:
            return cls(None, None, None, None, None, None, 0, "", False, None)
        return cls(
            state.status, state.exit_code, state.output, state.perfdata, state.executed_at,
            state.since, state.occurrences or 0, state.history or "", bool(state.flapping),
            state.last_result_id,
        )

    def apply(
        self, session: Session, target_id: str, check_id: str, row: dict[str, Any], *, quiet: bool
    ) -> None:
        previous = self.status
        changed = previous != row["status"]
        full = len(self.history) >= HISTORY_LENGTH
        self.history = (self.history + row["status"][0])[-HISTORY_LENGTH:]
        was_flapping = self.flapping
        # A repeat cannot start a flap: on a full history it only ages every change
        # (lower weights, the oldest dropped), so the percentage cannot rise. Skipping
        # the computation for a stable check repeating itself, the common case, halves
        # the time spent folding results.
        if changed or was_flapping or not full:
            self.flapping = is_flapping(self.history, was_flapping)
        if changed:
            self.since = row["executed_at"]
            self.occurrences = 1
        else:
            self.occurrences += 1
        self.status = row["status"]
        self.exit_code = row["exit_code"]
        self.output = row["output"]
        self.perfdata = row["perfdata"]
        self.executed_at = row["executed_at"]
        self.last_result_id = row["result_id"]
        self.changed = True
        if quiet:
            return
        key = f"{target_id}:{check_id}:{row['result_id']}"
        if self.flapping != was_flapping:
            record_event(
                session,
                kind="flapping",
                target_id=target_id,
                check_id=check_id,
                previous="flapping" if was_flapping else "stable",
                current="flapping" if self.flapping else "stable",
                message=f"{check_id} {'started' if self.flapping else 'stopped'} flapping",
                dedupe_key=f"flap:{key}",
            )
        elif changed and not self.flapping:
            record_event(
                session,
                kind="check_state",
                target_id=target_id,
                check_id=check_id,
                previous=previous,
                current=row["status"],
                message=row["output"][:500],
                dedupe_key=f"state:{key}",
            )

    def write(self, state: CheckState) -> None:
        state.status = self.status  # type: ignore[assignment]
        state.exit_code = self.exit_code  # type: ignore[assignment]
        state.output = self.output  # type: ignore[assignment]
        state.perfdata = self.perfdata  # type: ignore[assignment]
        state.executed_at = self.executed_at  # type: ignore[assignment]
        state.since = self.since  # type: ignore[assignment]
        state.occurrences = self.occurrences
        state.history = self.history
        state.flapping = self.flapping
        state.last_result_id = self.last_result_id
