"""Agent refresh tokens: opaque, hashed, rotated on every use, with reuse detection.

Each registration starts a token *family*. Refreshing spends the presented token and
issues the next one in the family. A spent token presented again means two parties hold
the agent's secrets, so the whole family is revoked and the agent must re-register.

Every revocation also moves the agent's credential generation in Redis
(``server.security.revocation``), so the access JWTs it holds stop working at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from flask import has_app_context, has_request_context
from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from server.errors import Unauthorized
from server.models import AgentCredential, new_uuid, utcnow
from server.security import revocation
from server.security.jwt_tokens import JwtConfig, issue_access_token
from server.security.secrets import REFRESH_PREFIX, hash_secret, new_secret
from server.services import audit

# A spent refresh token presented again within this many seconds, with nothing newer in
# its family used yet, is an agent retrying after a lost reply, not a stolen token.
REUSE_GRACE_S = 10


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int

    def as_reply(self) -> dict[str, object]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }


def _redis() -> redis.Redis:
    """The Redis that holds credential generations: the app's in a request, else the
    one of this process's settings (CLI commands, jobs)."""
    if has_app_context():
        from server.extensions import redis_client

        return redis_client()
    from server.jobs import context

    return context.redis_client()


def _issue(
    session: Session,
    jwt_config: JwtConfig,
    agent_id: str,
    family_id: str,
    refresh_ttl: int,
    generation: int | None = None,
) -> TokenPair:
    """The next pair of ``family_id``, its access token under ``generation`` (read from
    Redis unless the caller's revocation just returned it)."""
    refresh = new_secret(REFRESH_PREFIX)
    session.add(
        AgentCredential(
            target_id=agent_id,
            family_id=family_id,
            token_hash=hash_secret(refresh),
            expires_at=utcnow() + timedelta(seconds=refresh_ttl),
        )
    )
    if generation is None:
        generation = revocation.generation(_redis(), agent_id)
    return TokenPair(
        issue_access_token(jwt_config, agent_id, generation), refresh, jwt_config.ttl_s
    )


def start_family(
    session: Session, jwt_config: JwtConfig, agent_id: str, refresh_ttl: int
) -> TokenPair:
    """New credentials for a (re-)registered agent; its older families stop working."""
    generation = revoke_all(session, agent_id)
    return _issue(session, jwt_config, agent_id, new_uuid(), refresh_ttl, generation)


def revoke_all(
    session: Session, agent_id: str, *, cut_off_access_tokens: bool = True
) -> int | None:
    """Revoke every refresh token of ``agent_id`` and (unless told not to) cut off the
    access tokens it holds; the new credential generation, if it was cut off. A deleted
    target needs no cut-off: its agent's calls answer 404 ``target_not_found`` (which
    tells it to re-register), and a new registration of the id moves the generation
    anyway."""
    session.execute(
        update(AgentCredential)
        .where(AgentCredential.target_id == agent_id, AgentCredential.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return revocation.revoke(_redis(), agent_id) if cut_off_access_tokens else None


def is_live_refresh_token(session: Session, agent_id: str, refresh_token: str) -> bool:
    row = session.scalar(
        select(AgentCredential).where(AgentCredential.token_hash == hash_secret(refresh_token))
    )
    return (
        row is not None
        and row.target_id == agent_id
        and row.revoked_at is None
        and row.spent_at is None
        and row.expires_at > utcnow()
    )


def rotate(
    session: Session, jwt_config: JwtConfig, agent_id: str, refresh_token: str, refresh_ttl: int
) -> TokenPair:
    """Spend ``refresh_token`` and issue the next pair; reuse revokes the family
    (after the short grace for a retried request whose reply was lost).

    Spending is a conditional UPDATE so two concurrent refreshes with one token cannot
    both succeed.
    """
    now = utcnow()
    row = session.scalar(
        select(AgentCredential).where(AgentCredential.token_hash == hash_secret(refresh_token))
    )
    if row is None or row.target_id != agent_id:
        raise Unauthorized("unknown refresh token for this agent", code="invalid_refresh_token")
    if row.revoked_at is not None:
        raise Unauthorized(
            "refresh token revoked: re-register the agent with a bootstrap token",
            code="invalid_refresh_token",
        )
    if row.expires_at <= now:
        raise Unauthorized(
            "refresh token expired: re-register the agent with a bootstrap token",
            code="invalid_refresh_token",
        )
    spent = session.execute(
        update(AgentCredential)
        .where(AgentCredential.id == row.id, AgentCredential.spent_at.is_(None))
        .values(spent_at=now)
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        if _is_retry_of_lost_reply(session, row, now):
            # The agent never saw the reply to its first use (timeout, restart). Its
            # retry gets a fresh pair; the pair it never received stops working. If a
            # thief was the first to present the token, it wins this way: the audit
            # entry is how an operator learns of it.
            generation = revoke_family(session, agent_id, row.family_id)
            _audit_grace_used(session, row, now)
            return _issue(session, jwt_config, agent_id, row.family_id, refresh_ttl, generation)
        revoke_family(session, agent_id, row.family_id)
        session.commit()
        raise Unauthorized(
            "refresh token was already used: every token of this agent is revoked; "
            "re-register it with a bootstrap token (aami-server token create --agent-id ...)",
            code="refresh_token_reused",
        )
    return _issue(session, jwt_config, agent_id, row.family_id, refresh_ttl)


def _is_retry_of_lost_reply(session: Session, row: AgentCredential, now: datetime) -> bool:
    """Spent moments ago, and nothing newer in its family has been used since."""
    session.refresh(row)
    if row.spent_at is None or now - row.spent_at > timedelta(seconds=REUSE_GRACE_S):
        return False
    used_later = session.scalar(
        select(
            exists().where(
                AgentCredential.family_id == row.family_id,
                AgentCredential.spent_at > row.spent_at,
            )
        )
    )
    return not used_later


def _audit_grace_used(session: Session, row: AgentCredential, now: datetime) -> None:
    assert row.spent_at is not None  # checked by _is_retry_of_lost_reply
    details: dict[str, object] = {
        "family_id": row.family_id,
        "first_used_s_ago": round((now - row.spent_at).total_seconds(), 3),
        "grace_s": REUSE_GRACE_S,
    }
    if has_request_context():
        from server.api.peer import client_address

        details["client"] = client_address()
    audit.record(
        session, f"agent:{row.target_id}", "agent_token.refresh_grace_used", row.target_id, details
    )


def revoke_family(session: Session, agent_id: str, family_id: str) -> int:
    """Revoke one token family of ``agent_id`` and cut off its access tokens; the new
    credential generation."""
    session.execute(
        update(AgentCredential)
        .where(AgentCredential.family_id == family_id, AgentCredential.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return revocation.revoke(_redis(), agent_id)
