"""What each agent runs, computed once per policy serial and process, not per request.

Every heartbeat, result batch and long-poll round needs the checks assigned to its agent
and their version (the ETag). Loading every check with its assignments and hashing them
for each request made the heartbeat, the commonest call of a fleet, cost three queries
and a millisecond of ORM work. Here the enabled checks are loaded once per *policy
serial* (server/services/policy.py: every change to checks, assignments, groups or a
target's labels or group bumps it, in the same transaction) and kept per process as plain
data; a request reads the serial (one primary-key lookup, folded into the target's), picks
the checks that apply to its target, and gets the reply and version of that set from a
dictionary.

Checks that carry secrets (a non-empty ``env``) reach a target only through trusted
selectors: its id, a group an operator or a bootstrap token set, labels an operator or a
token set. A label or group the agent declared itself selects only checks without secrets
(docs/security.md); otherwise an agent could claim the label that hands out a password.

Reading the serial before the checks makes a stale cache impossible: a change commits the
new checks and the new serial together, and the checks are read by a later statement than
the serial, so they are at least as new as the serial they are filed under. The cache is
per database engine, so apps on different databases in one process never share it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine, bindparam, select
from sqlalchemy.orm import Session

from server.errors import NotFound
from server.models import Check, PolicySerial, Target


class AssignedTarget(Protocol):
    """What an assignment depends on: a :class:`Target` row, or its :class:`TargetKey`."""

    @property
    def id(self) -> str: ...
    @property
    def group_id(self) -> str | None: ...
    @property
    def labels(self) -> dict[str, Any]: ...
    @property
    def agent_labels(self) -> dict[str, Any]: ...
    @property
    def group_from_agent(self) -> bool: ...


@dataclass(frozen=True)
class TargetKey:
    """The columns of a target that pick its checks, read without loading the row."""

    id: str
    group_id: str | None
    labels: dict[str, Any]
    """Trusted labels (operator, token)."""
    agent_labels: dict[str, Any] = field(default_factory=dict)
    group_from_agent: bool = False


@dataclass(frozen=True)
class _Rule:
    """One enabled check as an agent sees it, and the ways it reaches targets."""

    check_id: str
    reply: dict[str, Any]
    target_ids: frozenset[str]
    group_ids: frozenset[str]
    labels: tuple[tuple[str, str | None], ...]
    carries_secrets: bool

    def applies_to(self, target: _Selectors) -> bool:
        group_id = target.trusted_group_id if self.carries_secrets else target.group_id
        labels = target.trusted_labels if self.carries_secrets else target.labels
        return (
            target.id in self.target_ids
            or (group_id is not None and group_id in self.group_ids)
            or any(labels.get(key) == value for key, value in self.labels)
        )


@dataclass(frozen=True)
class _Selectors:
    """What a target offers to assignment rules: everything, and the trusted part that
    checks carrying secrets may use."""

    id: str
    group_id: str | None
    labels: dict[str, Any]
    trusted_group_id: str | None
    trusted_labels: dict[str, Any]

    @classmethod
    def of(cls, target: AssignedTarget) -> _Selectors:
        trusted = target.labels or {}
        return cls(
            id=target.id,
            group_id=target.group_id,
            labels={**(target.agent_labels or {}), **trusted},
            trusted_group_id=None if target.group_from_agent else target.group_id,
            trusted_labels=trusted,
        )


@dataclass
class _Snapshot:
    serial: int
    rules: tuple[_Rule, ...]
    # check ids (in id order) -> (config version, the checks as the agent gets them)
    replies: dict[tuple[str, ...], tuple[str, list[dict[str, Any]]]] = field(
        default_factory=dict
    )


def _agent_view(check: Check) -> dict[str, Any]:
    """The check as ``GET /checks/target/{id}`` returns it (``check_to_dict`` without the
    assignment, enabled and maintenance fields)."""
    return {
        "id": check.id,
        "name": check.name,
        "command": list(check.command),
        "interval": check.interval_s,
        "timeout": check.timeout_s,
        "limits": {k: v for k, v in (check.limits or {}).items() if v is not None},
        "env": dict(check.env or {}),
        "shell": bool(check.shell),
    }


def version_of(checks: list[dict[str, Any]]) -> str:
    """The config version (ETag) of an assignment: a hash of its canonical JSON."""
    canonical = json.dumps(checks, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def _load(session: Session, serial: int) -> _Snapshot:
    rules = []
    for check in session.scalars(select(Check).where(Check.enabled.is_(True)).order_by(Check.id)):
        rules.append(_Rule(
            check_id=check.id,
            reply=_agent_view(check),
            target_ids=frozenset(a.target_id for a in check.assignments if a.target_id),
            group_ids=frozenset(a.group_id for a in check.assignments if a.group_id),
            labels=tuple((a.label_key, a.label_value) for a in check.assignments
                         if a.label_key is not None),
            carries_secrets=bool(check.env),
        ))
    return _Snapshot(serial, tuple(rules))


class AssignmentCache:
    """The snapshot of the newest serial this process has seen."""

    def __init__(self) -> None:
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()
        self.loads = 0  # how many times the checks were read (tests, metrics)

    def snapshot(self, session: Session, serial: int) -> _Snapshot:
        current = self._snapshot
        if current is not None and current.serial == serial:
            return current
        loaded = _load(session, serial)
        with self._lock:
            self.loads += 1
            # A slower request may bring an older serial: keep the newest.
            if self._snapshot is None or self._snapshot.serial <= serial:
                self._snapshot = loaded
        return loaded

    def lookup(
        self, session: Session, target: AssignedTarget, serial: int
    ) -> tuple[str, list[dict[str, Any]]]:
        """(config version, checks) of ``target``: shared, not to be changed."""
        snapshot = self.snapshot(session, serial)
        selectors = _Selectors.of(target)
        ids = tuple(rule.check_id for rule in snapshot.rules if rule.applies_to(selectors))
        found = snapshot.replies.get(ids)
        if found is None:
            by_id = {rule.check_id: rule for rule in snapshot.rules}
            checks = [by_id[i].reply for i in ids]
            found = snapshot.replies[ids] = (version_of(checks), checks)
        return found


_caches: weakref.WeakKeyDictionary[Engine, AssignmentCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def cache_for(session: Session) -> AssignmentCache:
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    cache = _caches.get(engine)
    if cache is None:
        with _caches_lock:
            cache = _caches.setdefault(engine, AssignmentCache())
    return cache


# Built once: making the statement anew cost as much CPU as running it.
_TARGET_AND_SERIAL = select(
    Target.id,
    Target.group_id,
    Target.labels,
    Target.agent_labels,
    Target.group_from_agent,
    select(PolicySerial.serial).where(PolicySerial.id == 1).scalar_subquery(),
).where(Target.id == bindparam("target_id"))


def target_and_serial(session: Session, target_id: str) -> tuple[TargetKey, int]:
    """The target's :class:`TargetKey` (404 ``target_not_found`` if there is none) and the
    current policy serial, in one statement.

    The commonest calls of a fleet (heartbeats, result batches, long-poll rounds) only read
    here, so the statement runs on its own autocommit connection: no BEGIN and COMMIT
    around it (two round trips fewer), no ORM row with its group joined in. Each
    statement sees the newest commits, so the serial is as fresh as in a transaction.
    """
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    with engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        row = autocommit.execute(_TARGET_AND_SERIAL, {"target_id": target_id}).first()
    if row is None:
        raise NotFound(f"no target with id {target_id}", code="target_not_found")
    return TargetKey(row[0], row[1], row[2] or {}, row[3] or {}, bool(row[4])), int(row[5] or 0)


def assignment_for(session: Session, target: AssignedTarget, serial: int) -> dict[str, Any]:
    """What ``GET /checks/target/{id}`` returns for ``target``: ``target_id``,
    ``config_version`` (the ETag) and ``checks`` (a copy the caller may change)."""
    version, checks = cache_for(session).lookup(session, target, serial)
    return {"target_id": target.id, "config_version": version,
            "checks": copy.deepcopy(checks)}


def config_version(session: Session, target: AssignedTarget, serial: int) -> str:
    """The version (ETag) of ``target``'s assignment, without copying the checks."""
    return cache_for(session).lookup(session, target, serial)[0]


def assigned_check_ids(session: Session, target: AssignedTarget, serial: int) -> set[str]:
    return {check["id"] for check in cache_for(session).lookup(session, target, serial)[1]}
