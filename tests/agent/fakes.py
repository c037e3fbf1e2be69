"""An in-memory server behind the Transport interface, for the agent's loop tests.

It keeps the parts of the server the agent can observe: tokens that expire and rotate,
an assignment with an ETag and a long-poll, pending commands delivered with heartbeats,
and the results it accepted. Switches make it fail the way a real server does.

Policies are signed like the real server signs them (server/security/policy.py), by
default with TEST_POLICY_KEY (which tests/agent/test_runner.py's configs trust), and the
registration reply announces the key like the real one; client certificates are issued
by a real server.security.ca.CertificateAuthority once a test sets ``ca``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.errors import (
    AuthError,
    InvalidRefreshToken,
    NotRegistered,
    RegistrationRejected,
    RequestRejected,
    TransportError,
)
from agent.transport.base import (
    NOT_MODIFIED,
    Assignment,
    Command,
    HeartbeatReply,
    IssuedCertificate,
    NotModified,
    PolicySignature,
    PushReply,
    Registration,
    Rejection,
    TokenGrant,
)
from tests.agent.jwt_helpers import make_jwt


def _new_policy_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


TEST_POLICY_KEY = _new_policy_key()
"""What a FakeServer signs with unless a test says otherwise."""


def public_key(key: Any) -> str:
    """The base64 public key of ``key``, as agents configure and pin it."""
    from server.security.policy import public_key_text

    return public_key_text(key)


TEST_POLICY_PUBLIC_KEY = public_key(TEST_POLICY_KEY)


def signed_assignment(target_id: str, checks: list[Any], *, version: str = "v1",
                      serial: int = 1, key: Any = TEST_POLICY_KEY) -> Assignment:
    """An assignment for ``target_id`` as a server holding ``key`` signs it."""
    from server.security.policy import sign_policy

    policy: dict[str, Any] = {"target_id": target_id, "config_version": version,
                              "checks": checks, "serial": serial,
                              "issued_at": "2026-11-22T10:30:00.123Z"}
    signature = sign_policy(key, policy)
    return Assignment(etag=f'"{version}"', config_version=version, checks=checks,
                      target_id=target_id, serial=serial, issued_at=policy["issued_at"],
                      signature=PolicySignature(**signature))


class FakeServer:
    """The server's state; each agent talks to it through its own FakeTransport."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.down = False  # every call fails as if the network were gone
        self.push_error: Exception | None = None  # push_results raises this
        self.reject_check_ids: set[str] = set()  # their results are refused inside a 202
        self.rejected: list[str] = []  # result ids refused that way
        self.heartbeat_interval: float | None = None
        self.registrations: list[Registration] = []
        self.refreshes = 0
        self.heartbeats: list[dict[str, Any]] = []
        self.polls: list[tuple[str | None, float]] = []  # (etag, wait) of each fetch
        self.push_attempts = 0
        self.accepted: list[dict[str, Any]] = []
        self._access: set[str] = set()
        self._refresh: set[str] = set()
        self._known_agents: set[str] = set()
        self._commands: list[Command] = []
        self._checks: list[Any] = []
        self._version = 0
        # Signed policies: None sends them unsigned (a server without a policy key).
        self.policy_key: Any = TEST_POLICY_KEY  # an Ed25519PrivateKey
        # Registration replies announce policy_key; as if over verified TLS when True.
        self.verified_tls = False
        self.serial = 0  # bumped by assign(); a test lowers it to replay
        self.target_override: str | None = None  # sign a policy for another target
        self.tamper: Callable[[dict[str, Any]], None] | None = None  # edits a signed reply
        # Client certificates: None answers a CSR with 409 ca_not_configured.
        self.ca: Any = None  # a server.security.ca.CertificateAuthority
        self.cert_days = 30
        self.csrs: list[str] = []
        self.issued: list[str] = []  # certificates issued, PEM
        self.renewals = 0

    # -- controls for tests ----------------------------------------------------------

    def assign(self, checks: list[Any]) -> None:
        with self._cond:
            self._checks = checks
            self._version += 1
            self.serial += 1
            self._cond.notify_all()

    @property
    def etag(self) -> str:
        return f'"v{self._version}"'

    def queue_command(self, check_id: str, command_type: str = "run_check") -> str:
        command_id = str(uuid.uuid4())
        with self._cond:
            self._commands.append(Command(id=command_id, type=command_type, check_id=check_id))
            self._cond.notify_all()
        return command_id

    def expire_tokens(self) -> None:
        """Every access token issued so far is refused from now on (401)."""
        with self._cond:
            self._access.clear()

    def forget_agents(self) -> None:
        """The server loses every target (404 -> the agent must register again)."""
        with self._cond:
            self._known_agents.clear()
            self._access.clear()
            self._refresh.clear()

    def results_for(self, check_id: str) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.accepted if r["check_id"] == check_id]

    # -- Transport -------------------------------------------------------------------

    def _grant(self, agent_id: str | None) -> TokenGrant:
        now = time.time()
        access = make_jwt(sub=agent_id, exp=now + 900, iat=now, jti=str(uuid.uuid4()))
        refresh = f"aami_rt_{uuid.uuid4().hex}"
        self._access.add(access)
        self._refresh.add(refresh)
        return TokenGrant(access_token=access, refresh_token=refresh, expires_in=900,
                          agent_id=agent_id, heartbeat_interval=self.heartbeat_interval)

    def _announced_keys(self) -> tuple[str, ...]:
        return () if self.policy_key is None else (public_key(self.policy_key),)

    def transport(self) -> FakeTransport:
        return FakeTransport(self)

    def wake_waiters(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _check(self, agent_id: str, token: str) -> None:
        if self.down:
            raise TransportError("connection refused (fake)")
        if agent_id not in self._known_agents:
            raise NotRegistered("HTTP 404 target_not_found")
        if token not in self._access:
            raise AuthError("HTTP 401 token_expired")

    def _issue(self, agent_id: str, csr: str, *, at_registration: bool) -> IssuedCertificate:
        self.csrs.append(csr)
        if self.ca is None:
            error = RegistrationRejected if at_registration else RequestRejected
            raise error("HTTP 409 ca_not_configured: the server has no CA",
                        code="ca_not_configured")
        certificate = self.ca.sign_agent_csr(agent_id, csr, self.cert_days)
        self.issued.append(certificate)
        return IssuedCertificate(certificate=certificate,
                                 ca_certificate=self.ca.certificate_pem)

    def register(self, registration: Registration) -> TokenGrant:
        with self._cond:
            if self.down:
                raise TransportError("connection refused (fake)")
            self.registrations.append(registration)
            agent_id = registration.agent_id or str(uuid.uuid4())
            certificate = None
            if registration.csr:
                certificate = self._issue(agent_id, registration.csr, at_registration=True)
            self._known_agents.add(agent_id)
            return dataclasses.replace(self._grant(agent_id), certificate=certificate,
                                       policy_keys=self._announced_keys(),
                                       verified_tls=self.verified_tls)

    def renew_certificate(self, agent_id: str, access_token: str, csr: str
                          ) -> IssuedCertificate:
        with self._cond:
            self._check(agent_id, access_token)
            self.renewals += 1
            return self._issue(agent_id, csr, at_registration=False)

    def refresh(self, agent_id: str, refresh_token: str) -> TokenGrant:
        with self._cond:
            if self.down:
                raise TransportError("connection refused (fake)")
            if agent_id not in self._known_agents:
                raise NotRegistered("HTTP 404 target_not_found")
            if refresh_token not in self._refresh:
                raise InvalidRefreshToken("HTTP 401 invalid_refresh_token")
            self._refresh.discard(refresh_token)
            self.refreshes += 1
            return self._grant(None)

    def heartbeat(
        self, agent_id: str, access_token: str, beat: Mapping[str, Any]
    ) -> HeartbeatReply:
        with self._cond:
            self._check(agent_id, access_token)
            self.heartbeats.append(dict(beat))
            commands, self._commands = tuple(self._commands), []
            return HeartbeatReply(config_version=f"v{self._version}",
                                  heartbeat_interval=self.heartbeat_interval,
                                  commands=commands)

    def fetch_checks(
        self, agent_id: str, access_token: str, etag: str | None, wait: float,
        caller: FakeTransport,
    ) -> Assignment | NotModified:
        deadline = time.monotonic() + wait
        with self._cond:
            self._check(agent_id, access_token)
            self.polls.append((etag, wait))
            # Like the server: hold while nothing changed and no command is queued.
            while (etag == self.etag and not self._commands and not caller.closed
                   and not self.down and time.monotonic() < deadline):
                self._cond.wait(deadline - time.monotonic())
            if caller.closed or self.down:
                raise TransportError("connection reset (fake)")
            # Like the server: a queued command ends a long-poll with a 200 that hands the
            # commands over (docs/agent-api.md); a plain fetch leaves them to the heartbeat.
            takes_commands = wait > 0 and bool(self._commands)
            if etag == self.etag and not takes_commands:
                return NOT_MODIFIED
            commands: tuple[Command, ...] = ()
            if takes_commands:
                commands, self._commands = tuple(self._commands), []
            return self._policy(agent_id, commands)

    def _policy(self, agent_id: str, commands: tuple[Command, ...]) -> Assignment:
        """The reply as the agent's transport decodes it from the wire (JSON round trip)."""
        policy: dict[str, Any] = {
            "target_id": self.target_override or agent_id,
            "config_version": f"v{self._version}",
            "checks": self._checks,
            "serial": self.serial,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        if self.policy_key is not None:
            from server.security.policy import sign_policy

            policy["signature"] = sign_policy(self.policy_key, policy)
        policy = json.loads(json.dumps(policy))
        if self.tamper is not None:
            self.tamper(policy)
        signature = policy.get("signature")
        return Assignment(
            etag=self.etag, config_version=policy["config_version"], checks=policy["checks"],
            commands=commands, target_id=policy["target_id"], serial=policy["serial"],
            issued_at=policy["issued_at"],
            signature=PolicySignature(**signature) if signature else None,
        )

    def push_results(
        self,
        agent_id: str,
        access_token: str,
        results: Sequence[Mapping[str, Any]],
        timeout: float | None = None,
    ) -> PushReply:
        with self._cond:
            self.push_attempts += 1
            self._check(agent_id, access_token)
            if self.push_error is not None:
                raise self.push_error
            if len(results) > 500:
                raise RequestRejected("HTTP 413 too_large")
            rejected = tuple(Rejection(r["result_id"], "check not assigned")
                             for r in results if r["check_id"] in self.reject_check_ids)
            self.rejected.extend(r.result_id or "" for r in rejected)
            self.accepted.extend(dict(r) for r in results
                                 if r["check_id"] not in self.reject_check_ids)
            return PushReply(accepted=len(results) - len(rejected), rejected=rejected)



class FakeTransport:
    """One agent's connection to a FakeServer (agent.transport.base.Transport)."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.closed = False
        self.tls_files: list[tuple[str | None, str | None, str | None]] = []

    def _open(self) -> FakeServer:
        if self.closed:
            raise TransportError("transport closed")
        return self.server

    def register(self, registration: Registration) -> TokenGrant:
        return self._open().register(registration)

    def refresh(self, agent_id: str, refresh_token: str) -> TokenGrant:
        return self._open().refresh(agent_id, refresh_token)

    def heartbeat(
        self, agent_id: str, access_token: str, beat: Mapping[str, Any]
    ) -> HeartbeatReply:
        return self._open().heartbeat(agent_id, access_token, beat)

    def fetch_checks(
        self, agent_id: str, access_token: str, etag: str | None, wait: float
    ) -> Assignment | NotModified:
        return self._open().fetch_checks(agent_id, access_token, etag, wait, self)

    def push_results(
        self,
        agent_id: str,
        access_token: str,
        results: Sequence[Mapping[str, Any]],
        timeout: float | None = None,
    ) -> PushReply:
        return self._open().push_results(agent_id, access_token, results, timeout)

    def renew_certificate(self, agent_id: str, access_token: str, csr: str
                          ) -> IssuedCertificate:
        return self._open().renew_certificate(agent_id, access_token, csr)

    def use_tls_files(self, client_cert: str | None, client_key: str | None,
                      ca_bundle: str | None) -> None:
        self.tls_files.append((client_cert, client_key, ca_bundle))

    def close(self) -> None:
        self.closed = True
        self.server.wake_waiters()


def wait_for(predicate: Callable[[], object], timeout: float = 8.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")
