"""The narrow interface between the agent and the server, free of any wire protocol.

A transport turns these calls into requests (REST today, gRPC tomorrow) and every
failure into one of the exceptions in :mod:`agent.errors`:

============================  =================================================
exception                     what the caller does
============================  =================================================
TransportError                network trouble or a server fault: back off, retry
RetryLater(retry_after)       wait at least ``retry_after`` seconds, retry
AuthError                     refresh the access token, retry
InvalidRefreshToken           re-register with the bootstrap token
Forbidden / NotRegistered     re-register, retry
RegistrationRejected          log the server's message, retry slowly
RequestRejected               final: for results, drop the batch and count it
============================  =================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol


class NotModified:
    """Returned by :meth:`Transport.fetch_checks` when the assignment did not change."""

    _instance: NotModified | None = None

    def __new__(cls) -> NotModified:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_MODIFIED"


NOT_MODIFIED: Final = NotModified()


@dataclass(frozen=True)
class Registration:
    """What the agent tells the server when it registers."""

    token: str
    agent_id: str | None
    hostname: str
    ip_address: str | None = None
    group_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    agent_version: str | None = None
    refresh_token: str | None = None
    """Proof of ownership when re-registering an id that already holds credentials."""
    csr: str | None = None
    """A PEM certificate signing request: asks the server's CA for a client certificate."""
    registration_key: str | None = None
    """The host's own secret: proof of owning ``agent_id`` when registering again."""


@dataclass(frozen=True)
class IssuedCertificate:
    """A client certificate the server's CA issued for the agent's CSR (PEM texts)."""

    certificate: str
    ca_certificate: str | None = None
    expires_at: str | None = None


@dataclass(frozen=True)
class TokenGrant:
    """Tokens from a registration or a refresh."""

    access_token: str
    refresh_token: str
    expires_in: float | None = None
    agent_id: str | None = None
    """Set by registration (the id the server filed us under); None from a refresh."""
    heartbeat_interval: float | None = None
    certificate: IssuedCertificate | None = None
    """Set by a registration that carried a CSR, when the server's CA signed it."""
    policy_keys: tuple[str, ...] = ()
    """Set by registration: the keys the server signs check policies with, as it says."""
    verified_tls: bool = False
    """The reply came over TLS with a verified server certificate, so ``policy_keys``
    are the server's own and not a man in the middle's (agent/policy_trust.py pins them)."""


@dataclass(frozen=True)
class Command:
    """Something the server asks the agent to do, delivered with a heartbeat reply."""

    id: str
    type: str
    check_id: str | None = None


@dataclass(frozen=True)
class HeartbeatReply:
    config_version: str | None = None
    heartbeat_interval: float | None = None
    server_time: str | None = None
    commands: tuple[Command, ...] = ()


@dataclass(frozen=True)
class PolicySignature:
    """The server's signature over an assignment (docs/agent-api.md, "Signed policies")."""

    algorithm: str
    key_id: str
    value: str
    """Base64 of the raw signature."""


@dataclass(frozen=True)
class Assignment:
    """The checks assigned to the agent, as the server sent them (validated later).

    ``etag`` is opaque: hand it back to :meth:`Transport.fetch_checks` unchanged.
    ``checks``, ``target_id``, ``config_version``, ``serial`` and ``issued_at`` are kept
    exactly as decoded from the reply: the signature covers them (agent/policy.py).
    """

    etag: str | None
    config_version: str | None
    checks: list[Any]
    commands: tuple[Command, ...] = ()
    """Commands handed over with this reply: a long-poll ends early when one is queued,
    and the server gives it to us here rather than with the next heartbeat."""
    target_id: str | None = None
    serial: int | None = None
    """Grows with every policy change on the server; a lower one is a replay."""
    issued_at: str | None = None
    signature: PolicySignature | None = None


@dataclass(frozen=True)
class Rejection:
    result_id: str | None
    reason: str


@dataclass(frozen=True)
class PushReply:
    accepted: int
    rejected: tuple[Rejection, ...] = ()
    job_id: str | None = None


class Transport(Protocol):
    """Calls from the agent to the server. Implementations must be thread-safe: the
    heartbeat, assignment and result loops call them concurrently."""

    def register(self, registration: Registration) -> TokenGrant:
        """Register (or re-register) the agent with a bootstrap token."""
        ...

    def refresh(self, agent_id: str, refresh_token: str) -> TokenGrant:
        """Exchange the refresh token (which is spent by this) for new tokens."""
        ...

    def heartbeat(
        self, agent_id: str, access_token: str, beat: Mapping[str, Any]
    ) -> HeartbeatReply:
        """Report liveness and agent facts; the reply may carry commands."""
        ...

    def fetch_checks(
        self, agent_id: str, access_token: str, etag: str | None, wait: float
    ) -> Assignment | NotModified:
        """The current assignment, or NOT_MODIFIED if it still matches ``etag``.

        With ``wait`` > 0 the server may hold the call that long for a change.
        """
        ...

    def push_results(
        self,
        agent_id: str,
        access_token: str,
        results: Sequence[Mapping[str, Any]],
        timeout: float | None = None,
    ) -> PushReply:
        """Hand a batch of results over; returns once the server has queued them.

        ``timeout`` caps the connect and read timeouts (for the last flush at shutdown).
        """
        ...

    def renew_certificate(
        self, agent_id: str, access_token: str, csr: str
    ) -> IssuedCertificate:
        """Have the server's CA sign a new client certificate for ``csr``."""
        ...

    def use_tls_files(
        self, client_cert: str | None, client_key: str | None, ca_bundle: str | None
    ) -> None:
        """Present this client certificate and trust this CA bundle (None: the system
        CAs) on every connection from now on; takes effect without a restart."""
        ...

    def close(self) -> None:
        """Release connections; the transport is not used afterwards."""
        ...
