"""The agent's exceptions: flat, specific, each with a message a person can act on.

Everything a transport raises derives from :class:`TransportError`, so a loop that only
needs "did the call fail?" catches one type, while the loops that react differently
(refresh on :class:`AuthError`, re-register on :class:`NotRegistered`, wait on
:class:`RetryLater`, drop on :class:`RequestRejected`) catch the specific one first.
None of them mention HTTP: a gRPC transport raises the same types.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The local configuration (or a file it points at) is unusable.

    The message names the file and the dotted key, for example
    ``agent.yaml: heartbeat.interval: '10x' is not a duration (use 500ms, 30s, 5m, 1h)``.
    """


class TransportError(AgentError):
    """A call to the server failed in a way that a later retry may fix.

    ``code`` is the server's machine-readable error code when it sent one.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class RetryLater(TransportError):
    """The server is overloaded or unavailable and said when to come back."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class AuthError(TransportError):
    """The access token was refused (expired or invalid): refresh it and retry."""


class Forbidden(AuthError):
    """The credentials belong to another agent: only a new registration helps."""


class InvalidRefreshToken(AuthError):
    """The refresh token was refused (unknown, spent or reused): re-register."""


class NotRegistered(TransportError):
    """The server does not know this agent (any more): re-register, then retry."""


class RegistrationRejected(TransportError):
    """The server refused to register the agent (bad bootstrap token, id in use).

    Retrying with the same input will fail again until an operator acts, so callers
    retry slowly and log the server's message, which says how to recover.
    """


class RegistrationOnHold(TransportError):
    """A recent registration attempt was refused; the next one is not due yet."""


class RequestRejected(TransportError):
    """The server refused the request itself (malformed, too large, invalid fields).

    Final for a result batch: resending the same batch gets the same answer.
    """
