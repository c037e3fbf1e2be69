"""Agent client certificate renewal from the built-in CA (enrollment is at registration)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from server.api import schemas
from server.api.auth import current_caller
from server.api.routing import route
from server.db import db_session
from server.extensions import certificate_authority, settings
from server.services.certificates import issue_agent_certificate
from server.services.targets import get_target

bp = Blueprint("certificates", __name__, url_prefix="/api/v1")


@route(
    bp,
    "/agents/<agent_id>/certificate",
    "POST",
    summary="Renew the agent's client certificate from a new CSR (the key stays on the host)",
    body=schemas.CertificateRequest,
    reply=schemas.CertificateReply,
    auth="agent",
    extra_statuses={409: "the server has no CA (ca_not_configured)"},
)
def renew_certificate(agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
    session = db_session()
    authority = certificate_authority().get()
    # A deleted target's token may live on until it expires: it gets no new certificate.
    get_target(session, agent_id)
    reply = issue_agent_certificate(
        session,
        authority,
        agent_id,
        body["csr"],
        days=settings().CLIENT_CERT_DAYS,
        actor=current_caller().actor,
        via="renewal",
    )
    session.commit()
    return reply
