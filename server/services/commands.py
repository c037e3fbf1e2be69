"""Commands queued for one agent (for example a forced check), delivered once."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis

from server.services import notify

# Commands one reply carries at most; the rest wait for the agent's next call.
MAX_PER_REPLY = 100


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
    """Pop the oldest pending commands (up to :data:`MAX_PER_REPLY`) in one atomic LPOP,
    so two replies never carry the same one."""
    return decode_taken(client.lpop(_key(agent_id), MAX_PER_REPLY))


def decode_taken(raw: Any) -> list[dict[str, Any]]:
    """The reply of ``LPOP key count`` (nil when the queue was empty) as commands."""
    return [json.loads(item) for item in raw or ()]


def give_back(client: redis.Redis, agent_id: str, taken: list[dict[str, Any]]) -> None:
    """Put commands taken for a reply that then failed back at the head of the queue."""
    if taken:
        client.lpush(_key(agent_id), *[json.dumps(entry) for entry in reversed(taken)])
