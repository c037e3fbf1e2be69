"""URLs as they may be shown: in logs, job descriptions and error messages.

A webhook URL often carries its own credentials: ``user:password@`` before the host, a
``?token=`` or ``?sig=`` in the query, or (Slack, Discord) a long random path segment.
:func:`redact_url` keeps what tells an operator which endpoint is meant (scheme, host,
port, the readable part of the path) and replaces the rest with ``***``.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# Query parameter names that hold secrets: matched as parts of the name, so
# ``api_key``, ``X-Amz-Signature``, ``access_token`` and ``hook_secret`` all count.
_SECRET_PARAM = re.compile(
    r"token|key|secret|passw|pwd|sig|auth|credential|session|code|hash|hmac", re.IGNORECASE
)
# A path segment that looks random (letters and digits mixed, long): a bearer secret.
_SECRET_SEGMENT = re.compile(r"^(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_\-.~=+]{16,}$")


def redact_url(url: str) -> str:
    """``url`` without credentials; never raises, whatever the input."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK  # unparsable: showing any of it may show the secret
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{netloc}"
    path = "/".join(
        MASK if _SECRET_SEGMENT.match(segment) else segment for segment in parts.path.split("/")
    )
    query = urlencode(
        [
            (name, MASK if _SECRET_PARAM.search(name) else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def url_reference(url: str) -> str:
    """A short stable name for ``url`` that reveals nothing of it: what a queued job
    carries instead of the URL (RQ keeps job arguments in Redis and lists them)."""
    return "webhook-" + hashlib.sha256(url.encode()).hexdigest()[:16]
