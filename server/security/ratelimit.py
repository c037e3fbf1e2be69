"""Fixed-window rate limits counted in Redis, so every gunicorn worker and replica shares them.

A limit is written ``COUNT/PERIOD`` (``30/1m``, ``600/1h``; ``off`` disables it). Each
(scope, identity) gets one counter per window of PERIOD seconds; INCR and EXPIRE run in
one MULTI/EXEC transaction, so a counter can never be left without its expiry and two
workers never lose an increment. A fixed window lets at most 2 x COUNT through around a
window boundary, which is enough for what it guards (registration, token refresh).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass

import redis

from agent.durations import parse_duration

KEY_PREFIX = "aami:ratelimit"
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")
_UNIT_WORDS = {"second": "1s", "minute": "1m", "hour": "1h", "day": "24h"}


@dataclass(frozen=True)
class RateLimit:
    count: int
    period_s: int

    def __str__(self) -> str:
        return f"{self.count} per {self.period_s}s"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # Seconds until the current window ends: the Retry-After of a refusal.
    retry_after: int
    remaining: int


def parse_rate_limit(text: str) -> RateLimit | None:
    """``"30/1m"`` -> RateLimit(30, 60); ``"off"`` -> None; ``ValueError`` otherwise."""
    if text.strip().lower() in ("off", "none", "0"):
        return None
    match = _SPEC.match(text)
    if not match:
        raise ValueError(f"{text!r} is not COUNT/PERIOD (e.g. 30/1m) or 'off'")
    count, period = int(match.group(1)), match.group(2).lower()
    try:
        seconds = parse_duration(_UNIT_WORDS.get(period, period))
    except ValueError:
        raise ValueError(f"{text!r}: {period!r} is not a period such as 1m, 60s or 1h") from None
    if count < 1 or seconds < 1 or seconds != int(seconds):
        raise ValueError(f"{text!r}: the count and the period (whole seconds) must be at least 1")
    return RateLimit(count, int(seconds))


def _key(scope: str, identity: str, window: int) -> str:
    # Hashed: identities are addresses and agent ids, kept out of the key space's listing,
    # and bounded in length whatever a client sends.
    digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
    return f"{KEY_PREFIX}:{scope}:{digest}:{window}"


def _decision(limit: RateLimit, count: int, now: float, window: int) -> Decision:
    window_end = (window + 1) * limit.period_s
    return Decision(
        allowed=count <= limit.count,
        retry_after=max(1, math.ceil(window_end - now)),
        remaining=max(0, limit.count - count),
    )


def hit(
    client: redis.Redis,
    scope: str,
    identity: str,
    limit: RateLimit,
    now: float | None = None,
    *,
    spend: bool = True,
) -> Decision:
    """Count one request of ``identity`` against ``limit``; refused once over COUNT.

    ``spend=False`` counts nothing (one GET) and tells whether a request now would still
    be allowed: for limits that count only failures, checked before the outcome is known.
    """
    now = time.time() if now is None else now
    window = int(now // limit.period_s)
    key = _key(scope, identity, window)
    if not spend:
        return _decision(limit, int(client.get(key) or 0) + 1, now, window)
    with client.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        # A little past the window's end, so the key outlives clock skew between replicas.
        pipe.expire(key, limit.period_s + 5)
        count, _ = pipe.execute()
    return _decision(limit, int(count), now, window)
