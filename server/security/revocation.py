"""Cutting a revoked agent off at once, without a database query per request.

Access JWTs live for minutes and are verified without a database; revoking an agent's
refresh tokens alone would leave the one it holds working until it expires. Each agent
has a *credential generation* in one Redis hash: every access token carries the
generation it was issued under (claim ``gen``), and every revocation of the agent's
credentials (target deleted, token family revoked by reuse detection, re-registration,
claim reset) increments it, so every token issued before no longer matches. Checking
is one HGET per authenticated agent request.

If Redis loses the hash (a restart without persistence, the embedded server's restart)
every generation is back to 0: tokens issued under a later generation are refused, and
their agents refresh (through the database, which still knows what is revoked); tokens
issued under generation 0 and revoked since work again until they expire (minutes).
"""

from __future__ import annotations

import redis

GENERATION_KEY = "aami:agent_credential_generation"
CLAIM = "gen"


def generation(client: redis.Redis, agent_id: str) -> int:
    """The generation tokens of ``agent_id`` are issued under now (0 if never revoked)."""
    value = client.hget(GENERATION_KEY, agent_id)
    return int(value) if value is not None else 0


def revoke(client: redis.Redis, agent_id: str) -> int:
    """Make every access token issued to ``agent_id`` so far invalid; the new generation."""
    return int(client.hincrby(GENERATION_KEY, agent_id, 1))


def is_current(client: redis.Redis, agent_id: str, token_generation: int) -> bool:
    return generation(client, agent_id) == token_generation
