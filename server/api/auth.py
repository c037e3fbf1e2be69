"""Who is calling: admin tokens (opaque, hashed) and agent access JWTs.

An agent's token is good for its own paths only: the ``agent_id`` in the URL must be the
token's subject, and it must have been issued under the agent's current credential
generation (one Redis read: revoking an agent cuts it off at once). A client certificate,
when one was presented (or is required), must name that same agent (``server.api.peer``).
Failed admin-token attempts are counted per client address and audited
(``server.security.admin_auth``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import g, request
from sqlalchemy import select

from server.api.peer import client_address, enforce_certificate_binding
from server.db import db_session, get_database
from server.errors import Forbidden, Unauthorized
from server.extensions import redis_client, settings
from server.models import AdminToken
from server.security import admin_auth, revocation
from server.security.jwt_tokens import JwtConfig, verify_access_token
from server.security.ratelimit import parse_rate_limit
from server.security.secrets import ADMIN_PREFIX, hash_secret
from server.services.audit import admin_actor

READ_ONLY = "read-only"
ADMIN = "admin"
ROLES = (ADMIN, READ_ONLY)


@dataclass(frozen=True)
class Caller:
    kind: str  # admin | agent
    name: str
    role: str = ""
    agent_id: str = ""
    token_id: str = ""

    @property
    def can_write(self) -> bool:
        return self.kind == "admin" and self.role == ADMIN

    @property
    def actor(self) -> str:
        """How the audit log names this caller (never with a secret)."""
        if self.kind == "admin":
            return admin_actor(self.name, self.token_id)
        return self.name


def jwt_config() -> JwtConfig:
    s = settings()
    return JwtConfig(s.SECRET_KEY, s.JWT_ISSUER, s.JWT_AUDIENCE, s.ACCESS_TOKEN_TTL)


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "missing credentials: send 'Authorization: Bearer <token>'", code="missing_token"
        )
    return token.strip()


def find_admin_token(secret: str, *, via: str) -> AdminToken | None:
    """The live admin token with this secret, or None (a failure counted and audited);
    429 while this client address is refused for too many failures."""
    address = client_address()
    limit = parse_rate_limit(settings().ADMIN_AUTH_FAILURE_LIMIT)
    admin_auth.refuse_if_blocked(redis_client(), address, limit)
    row = db_session().scalar(
        select(AdminToken).where(AdminToken.token_hash == hash_secret(secret))
    )
    if row is not None and row.revoked_at is None:
        return row
    reason = "unknown token" if row is None else "revoked token"
    admin_auth.record_failure(
        redis_client(), get_database(), address, limit, via=via, reason=reason
    )
    return None


def _admin_caller(token: str) -> Caller:
    row = find_admin_token(token, via="api")
    if row is None:
        raise Unauthorized("unknown or revoked admin token", code="invalid_token")
    return Caller(kind="admin", name=row.name, role=row.role, token_id=row.id)


def _agent_caller(token: str) -> Caller:
    claims = verify_access_token(jwt_config(), token)
    if not revocation.is_current(redis_client(), claims.agent_id, claims.generation):
        raise Unauthorized(
            "access token revoked: refresh it with POST /api/v1/agents/{id}/token, or "
            "re-register the agent if its refresh token was revoked too",
            code="token_revoked",
        )
    return Caller(kind="agent", name=f"agent:{claims.agent_id}", agent_id=claims.agent_id)


def authenticate(mode: str, path_args: dict[str, Any]) -> Caller | None:
    """Enforce a route's ``auth`` mode; returns the caller (also kept in ``g.caller``)."""
    if mode in ("none", "bootstrap"):
        if "agent_id" in path_args:
            # Token refresh: an agent's path without a bearer token, bound all the same.
            enforce_certificate_binding(path_args["agent_id"])
        return None
    token = _bearer()
    caller = _admin_caller(token) if token.startswith(ADMIN_PREFIX) else _agent_caller(token)
    if caller.kind == "agent":
        if mode not in ("agent", "agent-or-admin"):
            raise Forbidden("this call needs an admin token, not an agent token")
        if path_args.get("agent_id") != caller.agent_id:
            raise Forbidden("an agent's token is good for its own paths only")
        enforce_certificate_binding(caller.agent_id)
    else:
        if mode == "agent":
            raise Forbidden("this call is made by agents with their access token")
        if mode == "admin-write" and not caller.can_write:
            raise Forbidden(
                f"admin token {caller.name!r} is read-only: this call changes data",
                code="read_only_token",
            )
    g.caller = caller
    return caller


def current_caller() -> Caller:
    return g.caller
