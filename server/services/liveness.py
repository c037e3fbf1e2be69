"""Agent liveness in Redis: a sorted set by last heartbeat, facts in a hash.

The database is written only when an agent's status changes (pending, stale or offline
to online here; the sweep job writes the other direction).
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

import redis

from server.services import clones, commands

LAST_SEEN_KEY = "aami:liveness"
FACTS_KEY = "aami:facts"
STATUS_KEY = "aami:status"


def record_heartbeat(client: redis.Redis, agent_id: str, facts: dict[str, Any]) -> str | None:
    """Store the heartbeat; returns the status Redis last knew for the agent (None if none)."""
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(LAST_SEEN_KEY, {agent_id: now})
        pipe.hset(FACTS_KEY, agent_id, json.dumps({**facts, "received_at": now}))
        pipe.hget(STATUS_KEY, agent_id)
        *_, status = pipe.execute()
    return status.decode() if status else None


class Beat(NamedTuple):
    status: str | None
    """The status Redis last knew for the agent (None if none)."""
    commands: list[dict[str, Any]]
    previous_instance: str | None
    """The instance id the agent's previous heartbeat carried (clone detection)."""


def beat(
    client: redis.Redis, agent_id: str, facts: dict[str, Any], instance_id: str | None = None
) -> Beat:
    """A heartbeat's Redis work in one round trip: :func:`record_heartbeat`, the agent's
    oldest pending commands taken by one LPOP (atomic: two replies never carry the same
    one), and ``instance_id`` swapped in for the one the previous heartbeat carried."""
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(LAST_SEEN_KEY, {agent_id: now})
        pipe.hset(FACTS_KEY, agent_id, json.dumps({**facts, "received_at": now}))
        pipe.hget(STATUS_KEY, agent_id)
        pipe.lpop(commands.queue_key(agent_id), commands.MAX_PER_REPLY)
        if instance_id:
            clones.swap_instance(pipe, agent_id, instance_id)
        _, _, status, raw, *swapped = pipe.execute()
    previous = swapped[0].decode() if swapped and swapped[0] else None
    return Beat(status.decode() if status else None, commands.decode_taken(raw), previous)


def remember_status(client: redis.Redis, agent_id: str, status: str) -> None:
    client.hset(STATUS_KEY, agent_id, status)


def forget(client: redis.Redis, agent_id: str) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.zrem(LAST_SEEN_KEY, agent_id)
        pipe.hdel(FACTS_KEY, agent_id)
        pipe.hdel(STATUS_KEY, agent_id)
        pipe.execute()


def last_seen(client: redis.Redis, agent_ids: list[str]) -> dict[str, float]:
    if not agent_ids:
        return {}
    scores = client.zmscore(LAST_SEEN_KEY, agent_ids)
    return {a: s for a, s in zip(agent_ids, scores, strict=True) if s is not None}


def facts(client: redis.Redis, agent_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not agent_ids:
        return {}
    raw = client.hmget(FACTS_KEY, agent_ids)
    return {a: json.loads(r) for a, r in zip(agent_ids, raw, strict=True) if r}


def seen_before(client: redis.Redis, cutoff: float) -> list[tuple[str, float]]:
    """Agents whose last heartbeat is older than ``cutoff`` (epoch seconds)."""
    entries: list[tuple[bytes, float]] = client.zrangebyscore(  # type: ignore[assignment]
        LAST_SEEN_KEY, 0, cutoff, withscores=True
    )
    return [(member.decode(), score) for member, score in entries]
