"""Agent client certificates from the built-in CA: issued from the agent's CSR, audited.

The CA is loaded on first use and kept for the life of the app (one per app, so tests and
several apps in a process never share one); a server without a CA answers a CSR with 409
``ca_not_configured`` until an operator runs ``aami-server ca init``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from server.errors import Conflict, InvalidFields, ServiceUnavailable
from server.security import ca
from server.services import audit

log = logging.getLogger(__name__)


class AuthorityCache:
    """The CA of one app, read from ``directory`` once it exists."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._authority: ca.CertificateAuthority | None = None
        self._lock = threading.Lock()

    @property
    def exists(self) -> bool:
        return (self.directory / ca.CA_KEY_FILE).exists() and (
            self.directory / ca.CA_CERT_FILE
        ).exists()

    def get(self) -> ca.CertificateAuthority:
        """The CA; ``Conflict`` (409) when there is none, 503 when it cannot be read."""
        if self._authority is not None:
            return self._authority
        with self._lock:
            if self._authority is None:
                if not self.exists:
                    raise Conflict(
                        "this server has no certificate authority, so it cannot sign a csr: "
                        "an operator creates one with 'aami-server ca init' "
                        "(or register without a csr)",
                        code="ca_not_configured",
                    )
                try:
                    self._authority = ca.load_ca(self.directory)
                except (ca.CaError, OSError, ValueError) as exc:
                    log.error(
                        "certificate authority unreadable",
                        extra={"directory": str(self.directory), "error": str(exc)},
                    )
                    raise ServiceUnavailable(
                        "the certificate authority cannot be read: the server logged why",
                        code="ca_unavailable",
                        retry_after=60,
                    ) from None
        return self._authority


def issue_agent_certificate(
    session: Session,
    authority: ca.CertificateAuthority,
    agent_id: str,
    csr_pem: str,
    *,
    days: int,
    actor: str,
    via: str,
) -> dict[str, Any]:
    """Sign ``csr_pem`` for ``agent_id``; the reply fields, and an audit row in ``session``."""
    try:
        certificate = authority.sign_agent_csr(agent_id, csr_pem, days)
    except ca.CaError as exc:
        raise InvalidFields(f"invalid csr: {exc}", fields={"csr": [str(exc)]}) from None
    expires = ca.expires_at(certificate)
    serial = ca.serial_number(certificate)
    audit.record(
        session,
        actor,
        "certificate.issue",
        agent_id,
        {"serial": serial, "expires_at": expires, "via": via},
    )
    log.info(
        "client certificate issued",
        extra={"agent_id": agent_id, "serial": serial, "expires_at": expires.isoformat()},
    )
    return {
        "certificate": certificate,
        "ca_certificate": authority.certificate_pem,
        "certificate_expires_at": expires,
    }
