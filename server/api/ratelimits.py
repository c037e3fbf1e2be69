"""The rate limits routes declare with ``route(..., rate_limit=NAME)``.

``register``: registrations per client address (``AAMI_REGISTER_RATE_LIMIT``).
``refresh``: token refreshes per agent id and client address (``AAMI_REFRESH_RATE_LIMIT``).
Counted in Redis before the request body is even read, so refused requests cost little.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.api.peer import client_address
from server.errors import RateLimited
from server.extensions import redis_client, settings
from server.security import ratelimit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LimitSpec:
    setting: str
    what: str
    identity: Callable[[dict[str, Any], str], str]


LIMITS = {
    "register": LimitSpec("REGISTER_RATE_LIMIT", "registrations", lambda _args, ip: ip),
    "refresh": LimitSpec(
        "REFRESH_RATE_LIMIT",
        "token refreshes for this agent",
        lambda args, ip: f"{args.get('agent_id', '')}|{ip}",
    ),
}


def enforce(name: str, path_args: dict[str, Any]) -> None:
    """Count this request; 429 with ``Retry-After`` once the window's budget is spent."""
    spec = LIMITS[name]
    limit = ratelimit.parse_rate_limit(getattr(settings(), spec.setting))
    if limit is None:
        return
    address = client_address()
    decision = ratelimit.hit(redis_client(), name, spec.identity(path_args, address), limit)
    if decision.allowed:
        return
    log.warning(
        "rate limited",
        extra={"limit": name, "client": address, "retry_after": decision.retry_after},
    )
    raise RateLimited(
        f"too many {spec.what} from {address} (at most {limit}): "
        f"retry in {decision.retry_after} seconds",
        retry_after=decision.retry_after,
    )
