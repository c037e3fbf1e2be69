"""Keeps the agent's credentials valid: registers, refreshes before expiry, re-registers.

All loops share one :class:`Authenticator`. Its lock makes sure that when several loops
hit an expired token at once, only one refresh happens (refresh tokens rotate: using
one twice makes the server revoke the whole family). Callers pass the credentials they
used so a loop that was second to notice simply picks up the new ones.

Registration and refresh are rate-limited by the server (429 with Retry-After). The
wait it asks for holds for every loop: until it has passed, no loop registers or
refreshes, each gets RetryLater with the time that is left instead.

With certificate enrollment on, a registration also carries a CSR (see
agent/enrollment.py); a server without a CA refuses it (409 ``ca_not_configured``), and
the agent then registers without one rather than not at all.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from agent.backoff import Backoff
from agent.credentials import Credentials, CredentialStore
from agent.enrollment import CA_NOT_CONFIGURED
from agent.errors import (
    AgentError,
    AuthError,
    ConfigError,
    Forbidden,
    InvalidRefreshToken,
    NotRegistered,
    RegistrationOnHold,
    RegistrationRejected,
    RetryLater,
    TransportError,
)
from agent.transport.base import IssuedCertificate, Registration, TokenGrant, Transport

log = logging.getLogger(__name__)

T = TypeVar("T")


class Enrollment(Protocol):
    """The certificate side of registration (agent.enrollment.CertificateManager)."""

    def registration_csr(self, agent_id: str | None) -> str | None:
        """A CSR to send with this registration, or None when no certificate is wanted."""
        ...

    def store(self, issued: IssuedCertificate) -> None:
        """Keep the certificate the server issued; raises AgentError when unusable."""
        ...

    def failed(self, exc: Exception) -> float:
        """Note (and log) that the server did not issue a certificate."""
        ...


class Authenticator:
    """Hands out valid credentials, talking to the server only when it has to."""

    def __init__(
        self,
        transport: Transport,
        store: CredentialStore,
        registration: Callable[[], Registration],
        *,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
        enrollment: Enrollment | None = None,
        on_registered: Callable[[TokenGrant], object] | None = None,
    ) -> None:
        """``registration`` builds the registration request; it raises ConfigError when
        there is no bootstrap token (read each time: the token file may come back).
        ``enrollment`` adds a CSR to registrations and keeps the certificate.
        ``on_registered`` sees every registration reply (the policy keys it announces)."""
        self._transport = transport
        self._store = store
        self._registration = registration
        self._clock = clock
        # Registration failures need an operator; retry slowly, and once for all loops.
        self._backoff = backoff or Backoff(base=5.0, cap=300.0)
        self._not_before = 0.0
        self._last_failure: AgentError | None = None
        self._enrollment = enrollment
        self._on_registered = on_registered
        # Set by a 429/503 on register or refresh: nobody calls either before then.
        self._retry_not_before = 0.0
        self._lock = threading.Lock()
        self._creds = store.load()
        self.heartbeat_interval: float | None = None
        """The interval the server asked for at registration, if it did."""

    @property
    def credentials(self) -> Credentials | None:
        return self._creds

    def set_registration(self, registration: Callable[[], Registration]) -> None:
        """Use a new registration factory from now on (after a configuration reload)."""
        with self._lock:
            self._registration = registration

    def current(self) -> Credentials:
        """Valid credentials: registers first if there are none, refreshes if due."""
        with self._lock:
            if self._creds is None:
                self._creds = self._register(proof=None)
            elif self._creds.needs_refresh(self._clock()):
                self._creds = self._refresh(self._creds)
            return self._creds

    def call(self, operation: Callable[[Credentials], T]) -> T:
        """Run ``operation`` with valid credentials, repairing them once if refused.

        An AuthError leads to a refresh, NotRegistered or Forbidden to a new registration;
        then ``operation`` is retried once. Other errors propagate to the caller's backoff.
        """
        creds = self.current()
        try:
            return operation(creds)
        except (Forbidden, NotRegistered) as exc:
            log.warning("server refused our credentials (%s); registering again", exc)
            creds = self.reregister(creds)
        except AuthError as exc:
            log.info("access token refused (%s); refreshing", exc)
            creds = self.refresh(creds)
        return operation(creds)

    def refresh(self, stale: Credentials) -> Credentials:
        """New credentials after ``stale`` was refused (unless another loop got them)."""
        with self._lock:
            if self._creds is not None and self._creds is not stale:
                return self._creds
            self._creds = self._refresh(stale)
            return self._creds

    def reregister(self, stale: Credentials) -> Credentials:
        """Register again after the server stopped accepting ``stale``."""
        with self._lock:
            if self._creds is not None and self._creds is not stale:
                return self._creds
            self._creds = self._register(proof=stale.refresh_token)
            return self._creds

    def _hold_for_retry_after(self, call: str) -> None:
        """Raise RetryLater while a Retry-After from register or refresh is running."""
        remaining = self._retry_not_before - self._clock()
        if remaining > 0:
            raise RetryLater(f"{call}: the server asked to wait (next attempt in "
                             f"{remaining:.0f}s)", retry_after=remaining)

    def _note_retry_after(self, exc: RetryLater) -> None:
        if exc.retry_after:
            self._retry_not_before = max(self._retry_not_before,
                                         self._clock() + exc.retry_after)

    def _refresh(self, creds: Credentials) -> Credentials:
        self._hold_for_retry_after("refresh")
        try:
            grant = self._transport.refresh(creds.agent_id, creds.refresh_token)
        except RetryLater as exc:
            self._note_retry_after(exc)
            raise
        except (InvalidRefreshToken, NotRegistered) as exc:
            # The token family is gone (spent, reused or revoked): only the bootstrap
            # token helps now, and the old refresh token is no proof of anything.
            log.warning("refresh token refused (%s); registering again", exc)
            return self._register(proof=None)
        return self._keep(creds.agent_id, grant)

    def _register(self, proof: str | None) -> Credentials:
        now = self._clock()
        if now < self._not_before and self._last_failure is not None:
            raise RegistrationOnHold(
                f"not registered: {self._last_failure} "
                f"(next attempt in {self._not_before - now:.0f}s)"
            )
        self._hold_for_retry_after("register")
        try:
            registration = self._registration()
            if proof:
                registration = dataclasses.replace(registration, refresh_token=proof)
            grant = self._register_with_csr(registration)
        except RetryLater as exc:
            self._note_retry_after(exc)
            raise
        except (RegistrationRejected, ConfigError) as exc:
            # Both need an operator (a valid token, a free id): hold off every loop.
            self._last_failure = exc
            self._not_before = now + self._backoff.next_delay()
            raise
        self._backoff.reset()
        self._last_failure = None
        agent_id = grant.agent_id or registration.agent_id
        if not agent_id:
            raise TransportError("register: the reply carries no agent_id")
        if registration.agent_id and agent_id != registration.agent_id:
            log.warning("the server registered this agent as %s, not %s",
                        agent_id, registration.agent_id)
        self.heartbeat_interval = grant.heartbeat_interval
        log.info("registered with the server", extra={"agent_id": agent_id})
        if grant.certificate is not None and self._enrollment is not None:
            try:
                self._enrollment.store(grant.certificate)
            except AgentError as exc:
                self._enrollment.failed(exc)
        if self._on_registered is not None:
            self._on_registered(grant)
        return self._keep(agent_id, grant)

    def _register_with_csr(self, registration: Registration) -> TokenGrant:
        """Register, asking for a client certificate too when enrollment wants one."""
        csr = None
        if self._enrollment is not None:
            csr = self._enrollment.registration_csr(registration.agent_id)
        if not csr:
            return self._transport.register(registration)
        try:
            return self._transport.register(dataclasses.replace(registration, csr=csr))
        except RegistrationRejected as exc:
            if exc.code != CA_NOT_CONFIGURED:
                raise
            assert self._enrollment is not None
            self._enrollment.failed(exc)  # logs it; asks again much later
        return self._transport.register(registration)

    def _keep(self, agent_id: str, grant: TokenGrant) -> Credentials:
        creds = Credentials.issued(agent_id, grant.access_token, grant.refresh_token,
                                   grant.expires_in, now=self._clock())
        try:
            self._store.save(creds)
        except OSError as exc:
            # Keep going with the tokens in memory; after a restart the agent will have
            # to register again, which beats stopping now.
            log.error("cannot save credentials to %s: %s", self._store.path, exc)
        return creds

