"""Policy keys pinned at registration: trust on first use, over verified TLS only.

An agent without ``server.policy_keys`` learns the server's policy keys from its
registration reply when that reply came over TLS with a verified server certificate, and
keeps them in ``state_dir/policy-keys.json`` (0600). The agent never replaces a pin: if
the server later announces other keys, policies signed by them are refused until an
operator acts (docs/agent-config.md, "Signed policies"), because a key that changes
without anyone noticing is what an attacker holding a stolen certificate would want.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from agent.fileio import write_json


class PinError(AgentError):
    """The pin file exists but cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class Pin:
    keys: tuple[str, ...]
    """Base64 raw Ed25519 public keys, as the server announced them."""
    server: str
    """The server address the keys were learnt from (for the operator's eyes)."""
    pinned_at: str


class PolicyKeyPin:
    """The pin file of one agent."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Pin | None:
        """The pin, or None when there is none; PinError when the file is damaged."""
        try:
            data: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise PinError(f"cannot read {self.path}: {exc}") from None
        keys = data.get("keys") if isinstance(data, dict) else None
        if (not isinstance(keys, list) or not keys
                or not all(isinstance(key, str) and key for key in keys)):
            raise PinError(f"{self.path} holds no list of policy keys")
        return Pin(keys=tuple(keys), server=str(data.get("server") or ""),
                   pinned_at=str(data.get("pinned_at") or ""))

    def create(self, keys: tuple[str, ...], server: str, now: float) -> Pin:
        """Write a new pin; raises FileExistsError when there is one (never replaced)."""
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists")
        pin = Pin(keys=keys, server=server,
                  pinned_at=datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"))
        write_json(self.path, {"keys": list(pin.keys), "server": pin.server,
                               "pinned_at": pin.pinned_at}, mode=0o600)
        return pin
