"""The other end of a request: its address, and the client certificate it proved it holds.

A client certificate reaches the app in one of two ways:

- gunicorn's own TLS (``aami-server serve --certfile --keyfile --ca-certs --client-certs``):
  the handshake verified the certificate against the CA, and the TLS socket that gunicorn
  puts in the WSGI environ (``gunicorn.socket``) reports it through ``getpeercert()``;
- a TLS proxy (nginx) that verified it and passes it, URL-escaped PEM, in the header named
  by ``AAMI_CLIENT_CERT_HEADER``, believed only from ``AAMI_TRUSTED_PROXIES``.

The certificate names an agent (SAN ``urn:aami:agent:<id>``, else CN). A call on an agent's
path with a certificate of another agent is refused, whatever bearer token it carries; with
``AAMI_REQUIRE_CLIENT_CERT`` a call without a certificate is refused as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from flask import g, request

from server.errors import Forbidden, Unauthorized
from server.extensions import settings
from server.security import proxies
from server.security.ca import agent_id_from_certificate, agent_id_from_pem


def client_address() -> str:
    """The client's IP address (X-Forwarded-For only from ``AAMI_TRUSTED_PROXIES``)."""
    if "client_address" not in g:
        g.client_address = proxies.client_ip(
            request.remote_addr,
            request.headers.get("X-Forwarded-For"),
            settings().trusted_proxies(),
        )
    return str(g.client_address)


@dataclass(frozen=True)
class PeerCertificate:
    """A verified client certificate: the agent it names (None: names none) and how it came."""

    agent_id: str | None
    source: str  # "tls" (gunicorn's handshake) | "proxy" (trusted header)


def _from_tls() -> PeerCertificate | None:
    sock: Any = request.environ.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        # With verification on (CERT_OPTIONAL/REQUIRED), a certificate is reported only
        # once the handshake verified it; without a certificate it reports None.
        certificate = getpeercert()
    except (ValueError, OSError):  # not a TLS socket, or no handshake yet
        return None
    if not certificate:
        return None
    return PeerCertificate(agent_id_from_certificate(certificate), "tls")


def _from_proxy() -> PeerCertificate | None:
    header = settings().CLIENT_CERT_HEADER
    if not header:
        return None
    value = request.headers.get(header, "").strip()
    if not value or value == "(null)":
        return None
    if not proxies.is_trusted(request.remote_addr, settings().trusted_proxies()):
        # Not from our proxy: a client claiming a certificate it never presented.
        return None
    return PeerCertificate(agent_id_from_pem(unquote(value)), "proxy")


def peer_certificate() -> PeerCertificate | None:
    """The verified client certificate of this request, if it came with one."""
    if "peer_certificate" not in g:
        g.peer_certificate = _from_tls() or _from_proxy()
    found: PeerCertificate | None = g.peer_certificate
    return found


def enforce_certificate_binding(agent_id: str) -> None:
    """Refuse a call on ``agent_id``'s path with another's certificate, or (when required)
    with none: 401 ``client_certificate_required``, 403 ``certificate_mismatch``."""
    certificate = peer_certificate()
    if certificate is None:
        if settings().REQUIRE_CLIENT_CERT:
            raise Unauthorized(
                "this server requires a client certificate on agent calls: configure "
                "server.tls.client_cert and client_key (agents enroll with a csr when "
                "they register)",
                code="client_certificate_required",
            )
        return
    if certificate.agent_id != agent_id:
        named = f"agent {certificate.agent_id}" if certificate.agent_id else "no agent"
        raise Forbidden(
            f"the client certificate names {named}, not agent {agent_id}: "
            "a certificate is good for its own agent's paths only",
            code="certificate_mismatch",
        )
