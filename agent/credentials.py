"""The agent's tokens, kept in ``state_dir/credentials.json`` (mode 0600).

The access token is a JWT. The agent never verifies it (that is the server's job, and
the agent has no key); it only reads the ``exp`` claim so it can refresh the token a
little before the server would start refusing it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent import defaults
from agent.fileio import write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    agent_id: str
    """The id the server registered us under (normally the id from the id file)."""
    access_token: str
    refresh_token: str
    expires_at: float | None = None
    """When the access token expires, in this host's ``time.time()``; None if unknown."""
    refresh_at: float | None = None
    """When to refresh proactively; None means "only when the server refuses it"."""

    @classmethod
    def issued(
        cls,
        agent_id: str,
        access_token: str,
        refresh_token: str,
        expires_in: float | None = None,
        *,
        now: float | None = None,
        margin: float = defaults.TOKEN_REFRESH_MARGIN,
    ) -> Credentials:
        """Credentials for tokens the server issued just now.

        The lifetime comes from the JWT (``exp - iat``) when it says, else ``expires_in``;
        it is applied to the local clock, so a host whose clock is off by minutes still
        refreshes on time. Refresh happens ``margin`` seconds before expiry, or half-way
        through the lifetime for tokens shorter than twice the margin.
        """
        now = time.time() if now is None else now
        claims = jwt_claims(access_token)
        lifetime: float | None = None
        exp, iat = claims.get("exp"), claims.get("iat")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            lifetime = exp - (iat if isinstance(iat, int | float) else now)
        elif expires_in is not None:
            lifetime = float(expires_in)
        if lifetime is None:
            return cls(agent_id, access_token, refresh_token)
        lifetime = max(lifetime, 0.0)
        return cls(
            agent_id,
            access_token,
            refresh_token,
            expires_at=now + lifetime,
            refresh_at=now + lifetime - min(margin, lifetime / 2),
        )

    def needs_refresh(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.refresh_at is not None and now >= self.refresh_at


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded but NOT verified; {} if it is not a readable JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


class CredentialStore:
    """Loads and saves :class:`Credentials` as JSON; each save atomically replaces the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Credentials | None:
        """The saved credentials, or None if there are none (or they are unusable).

        A damaged file is not fatal: the agent re-registers with its bootstrap token.
        """
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable credentials file %s: %s", self.path, exc)
            return None
        try:
            creds = Credentials(
                agent_id=_required_str(data, "agent_id"),
                access_token=_required_str(data, "access_token"),
                refresh_token=_required_str(data, "refresh_token"),
                expires_at=_optional_float(data, "expires_at"),
                refresh_at=_optional_float(data, "refresh_at"),
            )
        except (TypeError, ValueError) as exc:
            log.warning("ignoring invalid credentials file %s: %s", self.path, exc)
            return None
        return creds

    def save(self, creds: Credentials) -> None:
        write_json(self.path, asdict(creds), mode=0o600)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _required_str(data: object, key: str) -> str:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} is missing")
    return value


def _optional_float(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise ValueError(f"{key} is not a number")
    return float(value)
