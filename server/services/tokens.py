"""Bootstrap and admin tokens: created with a one-time secret, stored hashed, revocable."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session

from server.errors import InvalidFields, NotFound, Unauthorized
from server.models import AdminToken, BootstrapToken, utcnow
from server.security.secrets import (
    ADMIN_PREFIX,
    BOOTSTRAP_PREFIX,
    display_prefix,
    hash_secret,
    new_secret,
)
from server.services.groups import require_group

ADMIN_ROLES = ("admin", "read-only")


@dataclass(frozen=True)
class Issued:
    """A new token row and its secret, which exists nowhere else after this."""

    row: Any
    secret: str


def create_bootstrap_token(
    session: Session,
    *,
    name: str,
    group_id: str | None = None,
    labels: dict[str, str] | None = None,
    max_uses: int | None = None,
    expires_in: float | None = None,
    agent_id: str | None = None,
) -> Issued:
    require_group(session, group_id)
    if agent_id is not None:
        try:
            agent_id = str(uuid.UUID(agent_id))  # the spelling registration compares with
        except ValueError:
            raise InvalidFields(
                f"agent id {agent_id!r} is not a UUID (see /etc/aami/agent-id on the host)",
                fields={"agent_id": ["not a valid UUID"]},
            ) from None
    secret = new_secret(BOOTSTRAP_PREFIX)
    row = BootstrapToken(
        name=name,
        token_hash=hash_secret(secret),
        prefix=display_prefix(secret),
        group_id=group_id,
        labels=dict(labels or {}),
        max_uses=max_uses,
        uses=0,
        bound_agent_id=agent_id,
        expires_at=utcnow() + timedelta(seconds=expires_in) if expires_in else None,
    )
    session.add(row)
    session.flush()
    return Issued(row, secret)


def list_bootstrap_tokens(session: Session, include_revoked: bool = False) -> list[BootstrapToken]:
    query = select(BootstrapToken).order_by(BootstrapToken.created_at)
    if not include_revoked:
        query = query.where(BootstrapToken.revoked_at.is_(None))
    return list(session.scalars(query))


def find_bootstrap_token(session: Session, id_or_prefix: str) -> BootstrapToken:
    rows = list(
        session.scalars(
            select(BootstrapToken).where(
                or_(BootstrapToken.id == id_or_prefix, BootstrapToken.prefix == id_or_prefix)
            )
        )
    )
    if len(rows) != 1:
        raise NotFound(f"no bootstrap token with id or prefix {id_or_prefix!r}")
    return rows[0]


def revoke_bootstrap_token(session: Session, id_or_prefix: str) -> BootstrapToken:
    row = find_bootstrap_token(session, id_or_prefix)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


@dataclass(frozen=True)
class TokenUse:
    """One use taken of a bootstrap token, with what a registration inherits from it."""

    token_id: str
    group_id: str | None
    labels: dict[str, Any]
    bound_agent_id: str | None


def take_bootstrap_token_use(engine: Engine, secret: str) -> TokenUse:
    """Count one use of a valid token, atomically; ``Unauthorized`` saying why otherwise.

    The conditional UPDATE keeps ``max_uses`` exact under concurrent registrations (two
    requests cannot both take the last use). It runs alone on a connection in autocommit
    mode, so the token's row is locked for that one statement, not for the registration's
    transaction: every agent of a fleet registers with the same token, and a lock held
    across a whole registration queued them all behind each other, holding pool
    connections that heartbeats then lacked (the fleet simulator saw 20 s waits). A
    registration that fails after this gives the use back
    (:func:`return_bootstrap_token_use`).
    """
    token_hash = hash_secret(secret)
    now = utcnow()
    claim = (
        update(BootstrapToken)
        .where(
            BootstrapToken.token_hash == token_hash,
            BootstrapToken.revoked_at.is_(None),
            or_(BootstrapToken.expires_at.is_(None), BootstrapToken.expires_at > now),
            or_(BootstrapToken.max_uses.is_(None), BootstrapToken.uses < BootstrapToken.max_uses),
        )
        .values(uses=BootstrapToken.uses + 1, last_used_at=now)
        .returning(BootstrapToken.id, BootstrapToken.group_id, BootstrapToken.labels,
                   BootstrapToken.bound_agent_id)
    )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        taken = conn.execute(claim).first()
        if taken is not None:
            return TokenUse(taken.id, taken.group_id, dict(taken.labels or {}),
                            taken.bound_agent_id)
        with Session(bind=conn) as session:
            row = session.scalar(select(BootstrapToken).where(
                BootstrapToken.token_hash == token_hash))
            raise Unauthorized(_refusal_reason(row, now), code="invalid_bootstrap_token")


def return_bootstrap_token_use(engine: Engine, use: TokenUse) -> None:
    """Give back a use taken by a registration that then failed."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(update(BootstrapToken).where(BootstrapToken.id == use.token_id)
                     .values(uses=BootstrapToken.uses - 1))


def _refusal_reason(row: BootstrapToken | None, now: datetime) -> str:
    if row is None:
        return "unknown bootstrap token: check the token the agent was given"
    if row.revoked_at is not None:
        return f"bootstrap token {row.prefix}... was revoked: ask an operator for a new one"
    if row.expires_at is not None and row.expires_at <= now:
        return f"bootstrap token {row.prefix}... expired: ask an operator for a new one"
    return f"bootstrap token {row.prefix}... has been used {row.uses} of {row.max_uses} times"


def create_admin_token(session: Session, *, name: str, role: str) -> Issued:
    if role not in ADMIN_ROLES:
        raise InvalidFields(
            f"role must be one of {', '.join(ADMIN_ROLES)}", fields={"role": ["unknown role"]}
        )
    secret = new_secret(ADMIN_PREFIX)
    row = AdminToken(
        name=name, role=role, token_hash=hash_secret(secret), prefix=display_prefix(secret)
    )
    session.add(row)
    session.flush()
    return Issued(row, secret)


def list_admin_tokens(session: Session) -> list[AdminToken]:
    return list(session.scalars(select(AdminToken).order_by(AdminToken.created_at)))


def revoke_admin_token(session: Session, id_or_prefix: str) -> AdminToken:
    rows = list(
        session.scalars(
            select(AdminToken).where(
                or_(AdminToken.id == id_or_prefix, AdminToken.prefix == id_or_prefix)
            )
        )
    )
    if len(rows) != 1:
        raise NotFound(f"no admin token with id or prefix {id_or_prefix!r}")
    if rows[0].revoked_at is None:
        rows[0].revoked_at = utcnow()
    return rows[0]
