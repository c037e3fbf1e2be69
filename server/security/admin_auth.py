"""Failed admin-token authentication: limited per client address, audited sparingly.

Each presentation of an unknown or revoked admin token (API bearer or UI login) counts
against ``AAMI_ADMIN_AUTH_FAILURE_LIMIT`` for the client's address; once that is spent,
every admin-token attempt from the address is refused with 429 until the window ends, so
guessing cannot go on at request speed. Only the failures that tell something reach the
audit log: the first of an address in each window, and the one that used up its budget;
over all addresses at most :data:`AUDIT_CAP_PER_WINDOW` entries are written per window
(and one saying that more were left out), so a flood cannot grow the log without bound.
"""

from __future__ import annotations

import logging

import redis

from server.db import Database
from server.errors import RateLimited
from server.security import ratelimit
from server.security.ratelimit import RateLimit
from server.services import audit

log = logging.getLogger(__name__)

SCOPE = "admin_auth_failures"
AUDITED_SCOPE = "admin_auth_failures_audited"
ACTION = "admin_token.auth_failed"
AUDIT_CAP_PER_WINDOW = 100


def actor_of(address: str) -> str:
    """The audit log's name for an unauthenticated client."""
    return f"client:{address}"


def refuse_if_blocked(client: redis.Redis, address: str, limit: RateLimit | None) -> None:
    """429 ``too_many_auth_failures`` once ``address`` spent its budget of failures."""
    if limit is None:
        return
    decision = ratelimit.hit(client, SCOPE, address, limit, spend=False)
    if not decision.allowed:
        raise RateLimited(
            f"too many failed admin-token attempts from {address} (at most {limit}): "
            f"retry in {decision.retry_after} seconds",
            retry_after=decision.retry_after,
            code="too_many_auth_failures",
        )


def record_failure(
    client: redis.Redis,
    database: Database,
    address: str,
    limit: RateLimit | None,
    *,
    via: str,
    reason: str,
) -> None:
    """Count one failure of ``address`` and audit it if it is one worth keeping.

    The audit row is written in a session of its own: the request's is rolled back with
    the 401 that follows.
    """
    if limit is None:
        _audit(database, address, {"via": via, "reason": reason})
        return
    decision = ratelimit.hit(client, SCOPE, address, limit)
    failures = limit.count - decision.remaining if decision.allowed else limit.count + 1
    if failures not in (1, limit.count):
        return
    details: dict[str, object] = {
        "via": via,
        "reason": reason,
        "failures_in_window": failures,
        "window_s": limit.period_s,
    }
    if failures == limit.count:
        details["now_refused_for_s"] = decision.retry_after
    audited = ratelimit.hit(
        client, AUDITED_SCOPE, "all", RateLimit(AUDIT_CAP_PER_WINDOW, limit.period_s)
    )
    if not audited.allowed:
        if _first_over_cap(client, limit):
            _audit(
                database,
                "*",
                {"via": via, "reason": "more failed attempts in this window are not audited"},
            )
        return
    log.warning("admin-token authentication failed", extra={"client": address, **details})
    _audit(database, address, details)


def _first_over_cap(client: redis.Redis, limit: RateLimit) -> bool:
    over = ratelimit.hit(client, AUDITED_SCOPE + "_over", "all", RateLimit(1, limit.period_s))
    return over.allowed


def _audit(database: Database, address: str, details: dict[str, object]) -> None:
    with database.session() as session:
        audit.record(session, actor_of(address), ACTION, address, details)
