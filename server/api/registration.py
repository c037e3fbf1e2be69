"""Agent-facing registration and token refresh (both rate-limited per client address)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint
from sqlalchemy.orm import Session

from server.api import schemas
from server.api.admission import REGISTRATION
from server.api.auth import jwt_config
from server.api.peer import PeerCertificate, client_address, peer_certificate
from server.api.routing import route
from server.db import db_session, get_database
from server.extensions import certificate_authority, policy_key, settings
from server.security.ca import CertificateAuthority
from server.security.policy import public_key_text
from server.services import credentials
from server.services.certificates import issue_agent_certificate
from server.services.registration import Registration, register_agent
from server.services.tokens import (
    TokenUse,
    return_bootstrap_token_use,
    take_bootstrap_token_use,
)

bp = Blueprint("registration", __name__, url_prefix="/api/v1")
log = logging.getLogger(__name__)


@route(
    bp,
    "/bootstrap-tokens/register",
    "POST",
    summary="Register an agent with a bootstrap token (201 new target, 200 existing); "
    "with a csr, enroll a client certificate too",
    body=schemas.RegisterRequest,
    reply=schemas.RegisterReply,
    status=201,
    auth="bootstrap",
    extra_statuses={
        200: "an existing target was connected",
        403: "the bootstrap token registers into another group (group_out_of_scope)",
        409: "agent id in use, or a csr sent to a server without a CA (ca_not_configured)",
    },
    rate_limit="register",
    admission=REGISTRATION,
)
def register(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    session = db_session()
    csr = body.pop("csr", None)
    # Before the bootstrap token is touched: a csr this server cannot sign is a 409.
    authority = certificate_authority().get() if csr is not None else None
    certificate = peer_certificate()
    engine = get_database().engine
    use = take_bootstrap_token_use(engine, body["token"])
    try:
        registration, reply = _register(session, body, use, csr, authority, certificate)
        session.commit()
    except BaseException:
        session.rollback()
        return_bootstrap_token_use(engine, use)
        raise
    log.info(
        "agent registered",
        extra={
            "agent_id": registration.agent_id,
            "new_target": registration.created,
            "client": client_address(),
            "certificate_issued": csr is not None,
        },
    )
    return reply, 201 if registration.created else 200


def _register(
    session: Session,
    body: dict[str, Any],
    use: TokenUse,
    csr: str | None,
    authority: CertificateAuthority | None,
    certificate: PeerCertificate | None,
) -> tuple[Registration, dict[str, Any]]:
    """The registration's writes and its reply, in the request's transaction."""
    registration = register_agent(
        session,
        jwt_config(),
        settings().REFRESH_TOKEN_TTL,
        body,
        use,
        certified_agent_id=certificate.agent_id if certificate else None,
    )
    reply: dict[str, Any] = {
        "agent_id": registration.agent_id,
        "heartbeat_interval": settings().HEARTBEAT_INTERVAL,
        "policy_keys": _policy_public_keys(),
        **registration.tokens.as_reply(),
    }
    if authority is not None and csr is not None:
        reply.update(
            issue_agent_certificate(
                session,
                authority,
                registration.agent_id,
                csr,
                days=settings().CLIENT_CERT_DAYS,
                actor=f"agent:{registration.agent_id}",
                via="registration",
            )
        )
    return registration, reply


def _policy_public_keys() -> list[str]:
    """What agents verify this server's policies with (agent/policy_trust.py pins them)."""
    key = policy_key()
    return [] if key is None else [public_key_text(key)]


@route(
    bp,
    "/agents/<agent_id>/token",
    "POST",
    summary="Exchange a refresh token for a new access token (the refresh token rotates)",
    body=schemas.RefreshRequest,
    reply=schemas.TokenPair,
    auth="bootstrap",
    rate_limit="refresh",
)
def refresh_token(agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
    session = db_session()
    pair = credentials.rotate(
        session, jwt_config(), agent_id, body["refresh_token"], settings().REFRESH_TOKEN_TTL
    )
    session.commit()
    log.info("agent token refreshed", extra={"agent_id": agent_id, "client": client_address()})
    return pair.as_reply()
