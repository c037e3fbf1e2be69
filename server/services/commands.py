"""Commands queued for one agent (for example a forced check), delivered once."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis

from server.services import notify


def _key(agent_id: str) -> str:
    return f"aami:commands:{agent_id}"


def queue_key(agent_id: str) -> str:
    """The Redis list holding ``agent_id``'s pending commands (JSON, oldest first)."""
    return _key(agent_id)


def queue_command(client: redis.Redis, agent_id: str, command: dict[str, Any]) -> dict[str, Any]:
    """Queue ``command`` and wake the agent's long-poll, in whichever process it is parked."""
    entry = {"id": str(uuid.uuid4()), **command}
    with client.pipeline(transaction=False) as pipe:
        pipe.rpush(_key(agent_id), json.dumps(entry))
        pipe.publish(notify.CHANNEL, agent_id)
        pipe.execute()
    return entry


def has_commands(client: redis.Redis, agent_id: str) -> bool:
    return bool(client.llen(_key(agent_id)))


def take_commands(client: redis.Redis, agent_id: str) -> list[dict[str, Any]]:
    """Pop every pending command atomically, so two replies never carry the same one."""
    with client.pipeline(transaction=True) as pipe:
        pipe.lrange(_key(agent_id), 0, -1)
        pipe.delete(_key(agent_id))
        raw, _ = pipe.execute()
    return [json.loads(item) for item in raw]


def give_back(client: redis.Redis, agent_id: str, taken: list[dict[str, Any]]) -> None:
    """Put commands taken for a reply that then failed back at the head of the queue."""
    if taken:
        client.lpush(_key(agent_id), *[json.dumps(entry) for entry in reversed(taken)])
