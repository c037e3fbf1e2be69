"""The relational model. Liveness lives in Redis; the database sees only transitions.

Sizing notes: ``check_results`` is the only table expected to reach hundreds of millions
of rows. Its primary key is ``(result_id, executed_at)``: the agent fixes both when it
creates a result, so the pair is as unique as ``result_id`` alone, and keeping the time
column in the key lets PostgreSQL partition the table by ``executed_at`` (the partition key
must be part of every unique constraint) and prune by dropping partitions.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return str(uuid.uuid4())


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite forgets the zone on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JSON}


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Target(Base):
    """A monitored host. Its id is the agent's UUID."""

    __tablename__ = "targets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    hostname: Mapped[str] = mapped_column(String(255), index=True)
    ip_address: Mapped[str | None] = mapped_column(String(64))
    group_id: Mapped[str | None] = mapped_column(
        ForeignKey("groups.id", ondelete="SET NULL"), index=True
    )
    # Trusted labels, set by an operator or a bootstrap token: checks that carry secrets
    # (``env``) are assigned through these, never through ``agent_labels`` (docs/security.md).
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Labels the agent declared itself (agent.yaml); the trusted ones win on conflict.
    agent_labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # True when ``group_id`` is a group the agent asked for (no operator or token set one):
    # such a group does not deliver checks that carry secrets.
    group_from_agent: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    attributes: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # pending (never seen), online, stale, offline: written only on transitions.
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    last_seen: Mapped[datetime | None]
    agent_version: Mapped[str | None] = mapped_column(String(64))
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False)
    registered_at: Mapped[datetime | None]
    # Hash of the secret the agent keeps beside its id: proof of owning the id when it
    # registers again (a lost reply, lost credentials).
    registration_key_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    group: Mapped[Group | None] = relationship(lazy="joined")

    @property
    def effective_labels(self) -> dict[str, Any]:
        """Every label of the target: the agent's own, overridden by the trusted ones."""
        return {**(self.agent_labels or {}), **(self.labels or {})}


class BootstrapToken(Base):
    __tablename__ = "bootstrap_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the secret, so operators can tell tokens apart in lists.
    prefix: Mapped[str] = mapped_column(String(16))
    group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.id", ondelete="SET NULL"))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    max_uses: Mapped[int | None] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    # Set when an operator issues the token for one agent id (recovery of a known agent).
    bound_agent_id: Mapped[str | None] = mapped_column(String(36))
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]


class AgentCredential(Base):
    """One refresh token. Rotation spends it and issues the next one in the same family."""

    __tablename__ = "agent_credentials"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    target_id: Mapped[str] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"), index=True)
    family_id: Mapped[str] = mapped_column(String(36), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    spent_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AdminToken(Base):
    __tablename__ = "admin_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))  # admin | read-only
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Check(Base):
    __tablename__ = "checks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    command: Mapped[list[str]] = mapped_column(JSON)
    interval_s: Mapped[float] = mapped_column(Float)
    timeout_s: Mapped[float] = mapped_column(Float)
    limits: Mapped[dict[str, Any]] = mapped_column(default=dict)
    env: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Run command[0] as a /bin/sh command line; agents refuse unless they allow shell checks.
    shell: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    assignments: Mapped[list[CheckAssignment]] = relationship(
        back_populates="check", cascade="all, delete-orphan", lazy="selectin"
    )


class CheckAssignment(Base):
    """One way a check reaches targets: by target id, by group, or by one label pair."""

    __tablename__ = "check_assignments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    check_id: Mapped[str] = mapped_column(ForeignKey("checks.id", ondelete="CASCADE"), index=True)
    target_id: Mapped[str | None] = mapped_column(String(36), index=True)
    group_id: Mapped[str | None] = mapped_column(String(64), index=True)
    label_key: Mapped[str | None] = mapped_column(String(128))
    label_value: Mapped[str | None] = mapped_column(String(256))

    check: Mapped[Check] = relationship(back_populates="assignments")


class CheckResult(Base):
    __tablename__ = "check_results"

    result_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    executed_at: Mapped[datetime] = mapped_column(primary_key=True)
    target_id: Mapped[str] = mapped_column(String(36))
    check_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    exit_code: Mapped[int] = mapped_column(SmallInteger)
    output: Mapped[str] = mapped_column(Text, default="")
    perfdata: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The agent's own executed_at when it lay outside the window the server trusts (its
    # clock ran ahead): ``executed_at`` is then the time the server received the result.
    agent_executed_at: Mapped[datetime | None]

    __table_args__ = (
        # History of one check on one host, newest first: the API's and UI's main query.
        Index("ix_check_results_target_check_time", "target_id", "check_id", "executed_at"),
        # Retention pruning and time-range scans.
        Index("ix_check_results_executed_at", "executed_at"),
    )


class CheckState(Base):
    """Current state of one check on one target, updated by the ingest job."""

    __tablename__ = "check_states"

    target_id: Mapped[str] = mapped_column(
        ForeignKey("targets.id", ondelete="CASCADE"), primary_key=True
    )
    check_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    exit_code: Mapped[int] = mapped_column(SmallInteger)
    output: Mapped[str] = mapped_column(Text, default="")
    perfdata: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    executed_at: Mapped[datetime]
    since: Mapped[datetime]
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    # Recent statuses, oldest first, one letter each (o/w/c/u), for flap detection.
    history: Mapped[str] = mapped_column(String(64), default="")
    flapping: Mapped[bool] = mapped_column(Boolean, default=False)
    last_result_id: Mapped[str | None] = mapped_column(String(36))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # target_status | check_state | flapping ...
    target_id: Mapped[str | None] = mapped_column(String(36))
    check_id: Mapped[str | None] = mapped_column(String(64))
    previous: Mapped[str | None] = mapped_column(String(32))
    current: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    # Set by jobs that may run twice (sweeps from two cron processes, retried ingests):
    # the unique key turns the second insert into a no-op instead of a duplicate event.
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_events_target_time", "target_id", "created_at"),
        Index("ix_events_created_at", "created_at"),
    )


class PolicySerial(Base):
    """One row: a counter that grows with every change to what agents run.

    Signed policies carry it so that an agent can refuse an older (replayed) policy.
    """

    __tablename__ = "policy_serial"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0)


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class DeadLetter(Base):
    """A result batch set aside because it could not be stored (server.jobs.dead_letters)."""

    __tablename__ = "dead_letters"

    # A digest of the batch as queued: setting the same batch aside twice keeps one row.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    agent_id: Mapped[str | None] = mapped_column(String(64))
    results: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    # The batch exactly as it was queued, byte for byte, so that a replay is faithful.
    batch: Mapped[bytes] = mapped_column(LargeBinary)
    set_aside_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


__all__ = [
    "AdminToken",
    "AgentCredential",
    "AuditLog",
    "Base",
    "BootstrapToken",
    "Check",
    "CheckAssignment",
    "CheckResult",
    "CheckState",
    "DeadLetter",
    "Event",
    "Group",
    "PolicySerial",
    "Target",
]
