"""Keeps the agent's credentials valid: registers, refreshes before expiry, re-registers.

All loops share one :class:`Authenticator`. Its lock makes sure that when several loops
hit an expired token at once, only one refresh happens (refresh tokens rotate: using
one twice makes the server revoke the whole family). Callers pass the credentials they
used so a loop that was second to notice simply picks up the new ones.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from agent.backoff import Backoff
from agent.credentials import Credentials, CredentialStore
from agent.errors import (
    AgentError,
    AuthError,
    ConfigError,
    Forbidden,
    InvalidRefreshToken,
    NotRegistered,
    RegistrationOnHold,
    RegistrationRejected,
    TransportError,
)
from agent.transport.base import Registration, TokenGrant, Transport

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    ) -> None:
        """``registration`` builds the registration request; it raises ConfigError when
        there is no bootstrap token (read each time: the token file may come back)."""
        self._transport = transport
        self._store = store
        self._registration = registration
        self._clock = clock
        # Registration failures need an operator; retry slowly, and once for all loops.
        self._backoff = backoff or Backoff(base=5.0, cap=300.0)
        self._not_before = 0.0
        self._last_failure: AgentError | None = None
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

    def _refresh(self, creds: Credentials) -> Credentials:
        try:
            grant = self._transport.refresh(creds.agent_id, creds.refresh_token)
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
        try:
            registration = self._registration()
            if proof:
                registration = dataclasses.replace(registration, refresh_token=proof)
            grant = self._transport.register(registration)
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
        return self._keep(agent_id, grant)

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

