"""Signed check policies: the assignment an agent receives is signed with Ed25519.

The signed document is the canonical JSON (sorted keys, no spaces) of the policy: target
id, config version, checks, a serial that only grows, and the time it was issued. An
agent holding the public key refuses unsigned, tampered or older (replayed) policies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ALGORITHM = "ed25519"
SIGNED_FIELDS = ("target_id", "config_version", "checks", "serial", "issued_at")


class PolicyKeyError(Exception):
    """The policy signing key is missing or unreadable; the message says what to do."""


def canonical_bytes(policy: dict[str, Any]) -> bytes:
    signed = {name: policy[name] for name in SIGNED_FIELDS}
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def public_key_text(key: Ed25519PrivateKey) -> str:
    """The public key as operators paste it into agent configs: base64 of the raw 32 bytes."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_id(public_key_b64: str) -> str:
    return hashlib.sha256(base64.b64decode(public_key_b64)).hexdigest()[:16]


def sign_policy(key: Ed25519PrivateKey, policy: dict[str, Any]) -> dict[str, str]:
    signature = key.sign(canonical_bytes(policy))
    return {
        "algorithm": ALGORITHM,
        "key_id": key_id(public_key_text(key)),
        "value": base64.b64encode(signature).decode(),
    }


def create_policy_key(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        raise PolicyKeyError(f"{path} exists already: move it away to make a new key")
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def load_policy_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise PolicyKeyError(
            f"no policy key at {path}: create one with 'aami-server policy-key create'"
        ) from None
    except ValueError as exc:
        raise PolicyKeyError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PolicyKeyError(f"{path} is not an Ed25519 key")
    return key
