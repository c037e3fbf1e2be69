"""An in-memory server behind the Transport interface, for the agent's loop tests.

It keeps the parts of the server the agent can observe: tokens that expire and rotate,
an assignment with an ETag and a long-poll, pending commands delivered with heartbeats,
and the results it accepted. Switches make it fail the way a real server does.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.errors import (
    AuthError,
    InvalidRefreshToken,
    NotRegistered,
    RequestRejected,
    TransportError,
)
from agent.transport.base import (
    NOT_MODIFIED,
    Assignment,
    Command,
    HeartbeatReply,
    NotModified,
    PushReply,
    Registration,
    Rejection,
    TokenGrant,
)
from tests.agent.jwt_helpers import make_jwt


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

    # -- controls for tests ----------------------------------------------------------

    def assign(self, checks: list[Any]) -> None:
        with self._cond:
            self._checks = checks
            self._version += 1
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

    def register(self, registration: Registration) -> TokenGrant:
        with self._cond:
            if self.down:
                raise TransportError("connection refused (fake)")
            self.registrations.append(registration)
            agent_id = registration.agent_id or str(uuid.uuid4())
            self._known_agents.add(agent_id)
            return self._grant(agent_id)

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
            return Assignment(etag=self.etag, config_version=f"v{self._version}",
                              checks=list(self._checks), commands=commands)

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
