"""Bringing one check's current state forward by its new results, in plain Python.

A :class:`StateFold` starts from the stored state (or none), takes results oldest first,
keeps the flap history and counters, says which event each result raises, and in the end
gives the row to write, once, however many results it took.

Results are ordered by ``executed_at``, which the server bounds (server/jobs/clock_window.py):
no result is dated more than the allowed skew past the server's clock when it is stored.
A stored state dated later than that came from before the bound held (an agent whose
clock said 2999): its time orders nothing, or it would hide every real result after it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Protocol

from server.jobs.events import NewEvent
from server.jobs.flapping import HISTORY_LENGTH, is_flapping
from server.models import CheckState, utcnow

# The columns a fold brings forward; each is a field of StateFold of the same name.
FOLDED = (
    "status", "exit_code", "output", "perfdata", "executed_at", "since", "occurrences",
    "history", "flapping", "last_result_id",
)
# The state is selected as these columns, not as ORM objects.
STATE_COLUMNS = tuple(getattr(CheckState, name) for name in ("target_id", "check_id", *FOLDED))


class StoredState(Protocol):
    """A row of :data:`STATE_COLUMNS` (the fields a fold starts from)."""

    status: str
    exit_code: int
    output: str
    perfdata: list[dict[str, Any]]
    executed_at: datetime
    since: datetime
    occurrences: int | None
    history: str | None
    flapping: bool | None
    last_result_id: str | None


@dataclass
class StateFold:
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
    def of(cls, state: StoredState | None, trusted_until: datetime) -> StateFold:
        """The fold of a stored state; its time counts only up to ``trusted_until``."""
        if state is None:
            return cls(None, None, None, None, None, None, 0, "", False, None)
        executed_at = state.executed_at if state.executed_at <= trusted_until else None
        return cls(
            state.status, state.exit_code, state.output, state.perfdata, executed_at,
            state.since, state.occurrences or 0, state.history or "", bool(state.flapping),
            state.last_result_id,
        )

    def is_news(self, row: dict[str, Any]) -> bool:
        """False for a result older than the state (late or retried: history only).

        A state whose time is not trusted (see :meth:`of`) takes any result."""
        return self.executed_at is None or row["executed_at"] > self.executed_at

    def apply(self, target_id: str, check_id: str, row: dict[str, Any]) -> NewEvent | None:
        """Bring the state forward by ``row``; returns the event it raises, if any."""
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
        key = f"{target_id}:{check_id}:{row['result_id']}"
        if self.flapping != was_flapping:
            return NewEvent(
                kind="flapping",
                target_id=target_id,
                check_id=check_id,
                previous="flapping" if was_flapping else "stable",
                current="flapping" if self.flapping else "stable",
                message=f"{check_id} {'started' if self.flapping else 'stopped'} flapping",
                dedupe_key=f"flap:{key}",
            )
        if changed and not self.flapping:
            return NewEvent(
                kind="check_state",
                target_id=target_id,
                check_id=check_id,
                previous=previous,
                current=row["status"],
                message=row["output"][:500],
                dedupe_key=f"state:{key}",
            )
        return None

    def row(self, target_id: str, check_id: str) -> dict[str, Any]:
        """The ``check_states`` row this fold has come to, keyed by column name."""
        folded = {name: getattr(self, name) for name in FOLDED}
        return {"target_id": target_id, "check_id": check_id, **folded, "updated_at": utcnow()}


assert {f.name for f in fields(StateFold)} == {*FOLDED, "changed"}
