"""agent/auth.py: register once, refresh before expiry or when refused, re-register."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.auth import Authenticator
from agent.credentials import Credentials, CredentialStore
from agent.errors import (
    AuthError,
    ConfigError,
    InvalidRefreshToken,
    NotRegistered,
    RegistrationOnHold,
    RegistrationRejected,
    RetryLater,
    TransportError,
)
from agent.transport.base import Registration, TokenGrant
from tests.agent.jwt_helpers import make_jwt

AGENT_ID = "6f1c2e9a-3b7d-4c1e-9f00-1234567890ab"


class TokenServer:
    """Just the token half of a transport: register and refresh, with rotation."""

    def __init__(self, lifetime: float = 900.0) -> None:
        self.lifetime = lifetime
        self.registrations: list[Registration] = []
        self.refreshes = 0
        self.valid_refresh: set[str] = set()
        self.reject_registration: Exception | None = None
        self._n = 0
        self._lock = threading.Lock()

    def _grant(self, agent_id: str | None) -> TokenGrant:
        self._n += 1
        now = time.time()
        rt = f"rt-{self._n}"
        self.valid_refresh.add(rt)
        return TokenGrant(access_token=make_jwt(exp=now + self.lifetime, iat=now, n=self._n),
                          refresh_token=rt, expires_in=self.lifetime, agent_id=agent_id,
                          heartbeat_interval=15)

    def register(self, registration: Registration) -> TokenGrant:
        with self._lock:
            self.registrations.append(registration)
            if self.reject_registration:
                raise self.reject_registration
            return self._grant(registration.agent_id)

    def refresh(self, agent_id: str, refresh_token: str) -> TokenGrant:
        with self._lock:
            time.sleep(0.01)  # widen the window for concurrent refreshes
            if refresh_token not in self.valid_refresh:
                raise InvalidRefreshToken("refresh_token_reused")
            self.valid_refresh.discard(refresh_token)  # rotation: spent now
            self.refreshes += 1
            return self._grant(None)


def registration(token: str = "aami_bt_x") -> Registration:
    return Registration(token=token, agent_id=AGENT_ID, hostname="web-1")


def make_auth(tmp_path: Path, server: TokenServer, **kwargs: object) -> Authenticator:
    return Authenticator(server, CredentialStore(tmp_path / "credentials.json"),  # type: ignore[arg-type]
                         registration, **kwargs)  # type: ignore[arg-type]


def test_registers_when_there_are_no_credentials_and_saves_them(tmp_path: Path) -> None:
    server = TokenServer()
    auth = make_auth(tmp_path, server)

    creds = auth.current()

    assert creds.agent_id == AGENT_ID
    assert len(server.registrations) == 1
    assert server.registrations[0].token == "aami_bt_x"
    assert auth.heartbeat_interval == 15
    assert CredentialStore(tmp_path / "credentials.json").load() == creds
    assert auth.current() is creds  # no second registration


def test_saved_credentials_are_used_without_registering(tmp_path: Path) -> None:
    server = TokenServer()
    make_auth(tmp_path, server).current()
    auth = make_auth(tmp_path, server)
    auth.current()
    assert len(server.registrations) == 1


def test_refreshes_before_expiry(tmp_path: Path) -> None:
    server = TokenServer()
    clock = [time.time()]
    auth = make_auth(tmp_path, server, clock=lambda: clock[0])
    first = auth.current()

    clock[0] += 900 - 30  # inside the refresh margin
    second = auth.current()

    assert server.refreshes == 1
    assert second.access_token != first.access_token
    assert second.refresh_token != first.refresh_token


def test_concurrent_auth_errors_cause_one_refresh(tmp_path: Path) -> None:
    server = TokenServer()
    auth = make_auth(tmp_path, server)
    stale = auth.current()
    barrier = threading.Barrier(8)
    seen: list[str] = []

    def refused_once() -> None:
        def operation(creds: Credentials) -> str:
            if creds is stale:
                raise AuthError("token_expired")
            return creds.access_token
        barrier.wait()
        seen.append(auth.call(operation))

    threads = [threading.Thread(target=refused_once) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert server.refreshes == 1  # a second refresh would spend a rotated token twice
    assert len(set(seen)) == 1


def test_not_registered_leads_to_registration_with_proof(tmp_path: Path) -> None:
    server = TokenServer()
    auth = make_auth(tmp_path, server)
    stale = auth.current()
    calls = []

    def operation(creds: Credentials) -> str:
        calls.append(creds)
        if creds is stale:
            raise NotRegistered("target_not_found")
        return "ok"

    assert auth.call(operation) == "ok"
    assert len(server.registrations) == 2
    assert server.registrations[1].refresh_token == stale.refresh_token


def test_refused_refresh_token_leads_to_registration_without_proof(tmp_path: Path) -> None:
    server = TokenServer()
    auth = make_auth(tmp_path, server)
    stale = auth.current()
    server.valid_refresh.clear()  # e.g. the family was revoked

    def operation(creds: Credentials) -> str:
        if creds is stale:
            raise AuthError("invalid_token")
        return "ok"

    assert auth.call(operation) == "ok"
    assert len(server.registrations) == 2
    assert server.registrations[1].refresh_token is None


def test_second_failure_after_repair_propagates(tmp_path: Path) -> None:
    auth = make_auth(tmp_path, TokenServer())

    def always_refused(creds: Credentials) -> None:
        raise AuthError("invalid_token")

    with pytest.raises(AuthError):
        auth.call(always_refused)


def test_rejected_registration_is_held_off_for_every_caller(tmp_path: Path) -> None:
    server = TokenServer()
    server.reject_registration = RegistrationRejected("invalid_bootstrap_token")
    auth = make_auth(tmp_path, server)

    with pytest.raises(RegistrationRejected):
        auth.current()
    for _ in range(5):
        with pytest.raises(RegistrationOnHold, match="invalid_bootstrap_token"):
            auth.current()
    assert len(server.registrations) == 1  # the server was asked once


def test_network_errors_during_registration_are_not_held(tmp_path: Path) -> None:
    server = TokenServer()
    server.reject_registration = TransportError("connection refused")
    auth = make_auth(tmp_path, server)
    for _ in range(3):
        with pytest.raises(TransportError, match="connection refused"):
            auth.current()
    assert len(server.registrations) == 3  # the caller's own backoff paces these


def test_missing_bootstrap_token_is_a_config_error(tmp_path: Path) -> None:
    def no_token() -> Registration:
        raise ConfigError("agent.yaml: server.bootstrap_token: needed")

    auth = Authenticator(TokenServer(), CredentialStore(tmp_path / "c.json"), no_token)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bootstrap_token"):
        auth.current()


# -- rate limits: a Retry-After on register or refresh holds every caller -----------------


def test_retry_after_on_registration_holds_every_caller_until_it_has_passed(
    tmp_path: Path,
) -> None:
    server = TokenServer()
    server.reject_registration = RetryLater("HTTP 429 rate_limited", retry_after=30)
    clock = [1000.0]
    auth = make_auth(tmp_path, server, clock=lambda: clock[0])

    with pytest.raises(RetryLater):
        auth.current()
    server.reject_registration = None
    for elapsed in (0.0, 10.0, 29.5):
        clock[0] = 1000.0 + elapsed
        with pytest.raises(RetryLater) as info:
            auth.current()
        assert info.value.retry_after == pytest.approx(30 - elapsed)
    assert len(server.registrations) == 1  # nobody asked again inside the window

    clock[0] = 1030.5
    assert auth.current().agent_id == AGENT_ID
    assert len(server.registrations) == 2


def test_retry_after_on_refresh_holds_every_caller_until_it_has_passed(
    tmp_path: Path,
) -> None:
    class RateLimitedRefresh(TokenServer):
        limited = True

        def refresh(self, agent_id: str, refresh_token: str) -> TokenGrant:
            self.refresh_calls = getattr(self, "refresh_calls", 0) + 1
            if self.limited:
                raise RetryLater("HTTP 429 rate_limited", retry_after=20)
            return super().refresh(agent_id, refresh_token)

    server = RateLimitedRefresh()
    clock = [time.time()]
    auth = make_auth(tmp_path, server, clock=lambda: clock[0])
    first = auth.current()
    clock[0] += 900 - 30  # refresh due

    with pytest.raises(RetryLater):
        auth.current()
    server.limited = False
    clock[0] += 19
    with pytest.raises(RetryLater, match="asked to wait"):
        auth.current()
    assert server.refresh_calls == 1

    clock[0] += 2
    assert auth.current().access_token != first.access_token
    assert server.refresh_calls == 2 and len(server.registrations) == 1
