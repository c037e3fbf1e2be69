"""What the pages show, read through the service layer plus the few read-only queries
the UI needs that no service offers (counts by status, states of many targets at once).

Each function takes the request's database session (and Redis client where liveness
is involved), so views stay thin and the live JSON and the HTML read the same data.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.models import Check, CheckResult, CheckState, Event, Target
from server.services import checks as check_service
from server.services import liveness
from server.services import targets as target_service
from server.ui.formatting import CHECK_SEVERITY, CHECK_STATUSES, TARGET_STATUSES

# Filter values that select by check state rather than by target status.
CHECK_FILTERS = ("failing", "critical", "warning", "unknown")
MAX_TARGETS = 1000
HISTORY_LIMIT = 120
EVENTS_LIMIT = 25


# --------------------------------------------------------------------------- the fleet


@dataclass(frozen=True)
class FleetFilter:
    """The overview's filter form, read from the query string (works without scripts)."""

    q: str = ""
    group: str = ""
    label: str = ""
    status: str = ""

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> FleetFilter:
        status = args.get("status", "").strip()
        if status not in TARGET_STATUSES + CHECK_FILTERS:
            status = ""
        return cls(
            q=args.get("q", "").strip()[:255],
            group=args.get("group", "").strip()[:64],
            label=args.get("label", "").strip()[:400],
            status=status,
        )

    def args(self) -> dict[str, str]:
        """The non-empty fields, for links and the live endpoint's query string."""
        return {k: v for k, v in vars(self).items() if v}

    @property
    def active(self) -> bool:
        return bool(self.args())

    def matches_labels(self, labels: Mapping[str, Any] | None) -> bool:
        if not self.label:
            return True
        key, sep, value = self.label.partition("=")
        labels = labels or {}
        if key.strip() not in labels:
            return False
        return not sep or str(labels[key.strip()]) == value.strip()


@dataclass
class TargetRow:
    target: Target
    last_seen: datetime | None
    states: list[CheckState] = field(default_factory=list)

    @property
    def failing(self) -> list[CheckState]:
        """Checks not OK, worst first."""
        bad = [s for s in self.states if s.status != "ok"]
        return sorted(bad, key=lambda s: (CHECK_SEVERITY.get(s.status, 9), s.check_id))

    @property
    def ok_count(self) -> int:
        return sum(1 for s in self.states if s.status == "ok")


@dataclass(frozen=True)
class FleetCounts:
    targets: dict[str, int]
    checks: dict[str, int]
    maintenance: int

    @property
    def total_targets(self) -> int:
        return sum(self.targets.values())

    @property
    def total_checks(self) -> int:
        return sum(self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "targets": {**self.targets, "total": self.total_targets},
            "checks": {**self.checks, "total": self.total_checks},
            "maintenance": self.maintenance,
        }


def fleet_counts(session: Session) -> FleetCounts:
    by_target = dict(
        session.execute(select(Target.status, func.count()).group_by(Target.status)).all()
    )
    by_check = dict(
        session.execute(
            select(CheckState.status, func.count())
            .join(Target, Target.id == CheckState.target_id)
            .group_by(CheckState.status)
        ).all()
    )
    maintenance = session.scalar(
        select(func.count()).select_from(Target).where(Target.maintenance.is_(True))
    )
    return FleetCounts(
        targets={s: int(by_target.get(s, 0)) for s in TARGET_STATUSES},
        checks={s: int(by_check.get(s, 0)) for s in CHECK_STATUSES},
        maintenance=int(maintenance or 0),
    )


def states_of(session: Session, target_ids: Iterable[str]) -> dict[str, list[CheckState]]:
    ids = list(target_ids)
    found: dict[str, list[CheckState]] = defaultdict(list)
    # Chunks keep the IN list within every database's parameter limit.
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for state in session.scalars(
            select(CheckState)
            .where(CheckState.target_id.in_(chunk))
            .order_by(CheckState.target_id, CheckState.check_id)
        ):
            found[state.target_id].append(state)
    return found


def last_seen_of(client: redis.Redis, targets: list[Target]) -> dict[str, datetime | None]:
    """Liveness lives in Redis; the database's ``last_seen`` is only written on transitions."""
    seen = liveness.last_seen(client, [t.id for t in targets])
    return {
        t.id: datetime.fromtimestamp(seen[t.id], UTC) if t.id in seen else t.last_seen
        for t in targets
    }


def fleet_rows(session: Session, client: redis.Redis, flt: FleetFilter) -> list[TargetRow]:
    """Targets matching ``flt`` by hostname; at most MAX_TARGETS are looked at (the page
    says so when there are more: see :func:`truncated`)."""
    targets = target_service.list_targets(
        session,
        status=flt.status if flt.status in TARGET_STATUSES else None,
        group_id=flt.group or None,
        hostname=flt.q or None,
        limit=MAX_TARGETS,
    )
    targets = [t for t in targets if flt.matches_labels(t.effective_labels)]
    states = states_of(session, (t.id for t in targets))
    seen = last_seen_of(client, targets)
    rows = [TargetRow(t, seen[t.id], states.get(t.id, [])) for t in targets]
    if flt.status == "failing":
        rows = [r for r in rows if r.failing]
    elif flt.status in CHECK_FILTERS:
        rows = [r for r in rows if any(s.status == flt.status for s in r.states)]
    return rows


def truncated(counts: FleetCounts) -> bool:
    """More targets exist than one page looks at."""
    return counts.total_targets > MAX_TARGETS


def label_choices(session: Session) -> list[str]:
    """Every ``key=value`` pair in use, for the label filter's suggestions."""
    pairs: set[str] = set()
    for trusted, declared in session.execute(select(Target.labels, Target.agent_labels)):
        for key, value in {**(declared or {}), **(trusted or {})}.items():
            pairs.add(f"{key}={value}")
    return sorted(pairs)


# --------------------------------------------------------------------------- one target


@dataclass
class CheckLine:
    """One assigned check on the target page: its definition (if it still exists) and its
    current state (None until the first result arrives)."""

    check_id: str
    check: Check | None
    state: CheckState | None

    @property
    def status(self) -> str:
        return self.state.status if self.state is not None else "pending"

    @property
    def name(self) -> str:
        return self.check.name if self.check is not None else self.check_id


def check_lines(session: Session, target: Target) -> list[CheckLine]:
    """Assigned checks and any states left by checks assigned earlier, worst first."""
    assigned = {c.id: c for c in check_service.checks_for_target(session, target)}
    states = {s.check_id: s for s in states_of(session, [target.id]).get(target.id, [])}
    lines = [CheckLine(cid, assigned.get(cid), states.get(cid)) for cid in assigned | states]
    return sorted(lines, key=lambda line: (CHECK_SEVERITY.get(line.status, 9), line.check_id))


def result_history(
    session: Session, target_id: str, check_id: str, limit: int = HISTORY_LIMIT
) -> list[CheckResult]:
    """Newest first, on the (target_id, check_id, executed_at) index."""
    return list(
        session.scalars(
            select(CheckResult)
            .where(CheckResult.target_id == target_id, CheckResult.check_id == check_id)
            .order_by(CheckResult.executed_at.desc())
            .limit(limit)
        )
    )


def recent_events(session: Session, target_id: str, limit: int = EVENTS_LIMIT) -> list[Event]:
    return list(
        session.scalars(
            select(Event)
            .where(Event.target_id == target_id)
            .order_by(Event.created_at.desc(), Event.id.desc())
            .limit(limit)
        )
    )


# --------------------------------------------------------------------------- checks


def state_summary(session: Session) -> dict[str, Counter[str]]:
    """For each check id, how many targets report each status."""
    summary: dict[str, Counter[str]] = defaultdict(Counter)
    rows = session.execute(
        select(CheckState.check_id, CheckState.status, func.count()).group_by(
            CheckState.check_id, CheckState.status
        )
    ).all()
    for check_id, status, count in rows:
        summary[check_id][status] += int(count)
    return summary
