"""Signed check policies: the agent runs only what the server's policy key signed.

The server signs every assignment reply with Ed25519 (docs/agent-api.md, "Signed
policies"): the signature covers the canonical JSON of ``target_id``, ``config_version``,
``checks``, ``serial`` and ``issued_at`` exactly as sent. The verifier refuses a reply
that is unsigned, signed by a key it does not trust, altered after signing, meant for
another target, or older than the last policy it accepted (a replay of a genuine but
outdated policy). Several keys may be trusted at once, so the server's key can be
rotated without touching every agent on the same day.

The canonical form must match ``server/security/policy.py::canonical_bytes`` byte for
byte; it is written out again here because the agent is installed without the server's
dependencies. ``cryptography`` is imported only when a verifier is made: it costs about
7 MB of resident memory, and an agent that runs unverified policies (its operator's
choice, agent/policy_trust.py) does without it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from agent.errors import AgentError
from agent.transport.base import Assignment

ALGORITHM = "ed25519"
SIGNED_FIELDS = ("target_id", "config_version", "checks", "serial", "issued_at")


class PolicyRejected(AgentError):
    """A policy from the server failed verification; the message says why."""


def canonical_bytes(assignment: Assignment) -> bytes:
    """The bytes the server signed: sorted keys, no spaces, UTF-8 (not ASCII-escaped)."""
    signed: dict[str, Any] = {
        "target_id": assignment.target_id,
        "config_version": assignment.config_version,
        "checks": assignment.checks,
        "serial": assignment.serial,
        "issued_at": assignment.issued_at,
    }
    return json.dumps(signed, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def key_id(raw_public_key: bytes) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def decode_public_key(text: str) -> bytes:
    """The raw 32 bytes of a base64 Ed25519 public key; ValueError when it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{text!r} is not a base64 Ed25519 public key (32 raw bytes, as "
                         "`aami-server policy-key show` prints it)")
    return raw


class PolicyVerifier:
    """Checks replies against the trusted public keys (base64 of the raw 32 bytes)."""

    def __init__(self, public_keys: Sequence[str], source: str = "server.policy_keys") -> None:
        """``source`` says where the keys come from, for messages. Raises ValueError for
        a key that is not a base64 Ed25519 public key."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if not public_keys:
            raise ValueError("at least one policy key is needed")
        self._source = source
        self._keys: dict[str, Ed25519PublicKey] = {}
        for text in public_keys:
            raw = decode_public_key(text)
            self._keys[key_id(raw)] = Ed25519PublicKey.from_public_bytes(raw)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def verify(self, assignment: Assignment, *, target_id: str,
               last_serial: int | None) -> None:
        """Return if ``assignment`` may run on agent ``target_id``; else PolicyRejected.

        ``last_serial`` is the serial of the last policy this agent accepted (None for
        none): a lower one is a replay. An equal one is the same policy sent again.
        """
        from cryptography.exceptions import InvalidSignature

        signature = assignment.signature
        if signature is None:
            raise PolicyRejected("the policy is not signed (this agent trusts only signed "
                                 "policies: server.policy_keys)")
        if signature.algorithm != ALGORITHM:
            raise PolicyRejected(f"unsupported signature algorithm {signature.algorithm!r} "
                                 f"(expected {ALGORITHM})")
        key = self._keys.get(signature.key_id)
        if key is None:
            raise PolicyRejected(f"the policy is signed by unknown key "
                                 f"{signature.key_id or '(none)'!r}; trusted keys: "
                                 f"{', '.join(self._keys)} ({self._source})")
        missing = [name for name in SIGNED_FIELDS if getattr(assignment, name) is None]
        if missing:
            raise PolicyRejected(f"the policy lacks {', '.join(missing)}")
        try:
            value = base64.b64decode(signature.value, validate=True)
        except (binascii.Error, ValueError):
            raise PolicyRejected("the policy's signature is not base64") from None
        try:
            key.verify(value, canonical_bytes(assignment))
        except InvalidSignature:
            raise PolicyRejected(f"the signature (key {signature.key_id}) does not verify: "
                                 "the policy was altered after it was signed") from None
        if assignment.target_id != target_id:
            raise PolicyRejected(f"the policy is for target {assignment.target_id}, "
                                 f"not for this agent ({target_id})")
        assert assignment.serial is not None  # checked with the other signed fields
        if last_serial is not None and assignment.serial < last_serial:
            raise PolicyRejected(f"replayed policy: serial {assignment.serial} is older "
                                 f"than the last accepted serial {last_serial}")
