"""Unsigned JWT-shaped tokens for tests (the agent never verifies signatures)."""

from __future__ import annotations

import base64
import json
from typing import Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(**claims: Any) -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    return f"{header}.{payload}.{_b64(b'not-a-real-signature')}"
