"""Agent refresh tokens: opaque, hashed, rotated on every use, with reuse detection.

Each registration starts a token *family*. Refreshing spends the presented token and
issues the next one in the family. A spent token presented again means two parties hold
the agent's secrets, so the whole family is revoked and the agent must re-register.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from server.errors import Unauthorized
from server.models import AgentCredential, new_uuid, utcnow
from server.security.jwt_tokens import JwtConfig, issue_access_token
from server.security.secrets import REFRESH_PREFIX, hash_secret, new_secret

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


def _issue(
    session: Session, jwt_config: JwtConfig, agent_id: str, family_id: str, refresh_ttl: int
) -> TokenPair:
    refresh = new_secret(REFRESH_PREFIX)
    session.add(
        AgentCredential(
            target_id=agent_id,
            family_id=family_id,
            token_hash=hash_secret(refresh),
            expires_at=utcnow() + timedelta(seconds=refresh_ttl),
        )
    )
    return TokenPair(issue_access_token(jwt_config, agent_id), refresh, jwt_config.ttl_s)


def start_family(
    session: Session, jwt_config: JwtConfig, agent_id: str, refresh_ttl: int
) -> TokenPair:
    """New credentials for a (re-)registered agent; its older families stop working."""
    revoke_all(session, agent_id)
    return _issue(session, jwt_config, agent_id, new_uuid(), refresh_ttl)


def revoke_all(session: Session, agent_id: str) -> None:
    session.execute(
        update(AgentCredential)
        .where(AgentCredential.target_id == agent_id, AgentCredential.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def has_live_credentials(session: Session, agent_id: str) -> bool:
    now = utcnow()
    return bool(
        session.scalar(
            select(
                exists().where(
                    AgentCredential.target_id == agent_id,
                    AgentCredential.revoked_at.is_(None),
                    AgentCredential.spent_at.is_(None),
                    AgentCredential.expires_at > now,
                )
            )
        )
    )


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
            # retry gets a fresh pair; the pair it never received stops working.
            revoke_family(session, row.family_id)
            return _issue(session, jwt_config, agent_id, row.family_id, refresh_ttl)
        revoke_family(session, row.family_id)
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


def revoke_family(session: Session, family_id: str) -> None:
    session.execute(
        update(AgentCredential)
        .where(AgentCredential.family_id == family_id, AgentCredential.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
