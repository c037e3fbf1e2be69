"""How the agent talks to the server: :class:`Transport` and the values it passes.

The REST implementation lives in :mod:`agent.transport.rest` and is imported only by
whoever builds one, so that importing this package does not load an HTTP client.
"""

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
    Transport,
)

__all__ = [
    "NOT_MODIFIED",
    "Assignment",
    "Command",
    "HeartbeatReply",
    "IssuedCertificate",
    "NotModified",
    "PolicySignature",
    "PushReply",
    "Registration",
    "Rejection",
    "TokenGrant",
    "Transport",
]
