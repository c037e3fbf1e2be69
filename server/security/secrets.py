"""Opaque secrets (bootstrap, refresh and admin tokens): made random, stored only as hashes.

The secrets carry 256 bits of randomness, so a plain SHA-256 is the right storage form:
a slow password hash buys nothing against brute force of such a space and would slow
every authenticated request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

BOOTSTRAP_PREFIX = "aami_bt_"
REFRESH_PREFIX = "aami_rt_"
ADMIN_PREFIX = "aami_adm_"


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def display_prefix(secret: str) -> str:
    """What lists may show of a secret: enough to tell tokens apart, too little to use."""
    return secret[:14]


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
