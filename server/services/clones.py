"""Clone detection: two hosts running under one agent id (docs/security.md).

Every agent sends a per-install instance id in its heartbeats (agent/identity.py). The
heartbeat's one Redis round trip swaps it in for the one the previous heartbeat carried
(``SET ... GET``), so the common case, the same instance as last time, costs one command
and no database work. Only when the instance changed does a second round trip ask whether
the new one had been replaced before: a reinstall changes the instance once, while two
hosts sharing one id (a cloned disk, a copied state directory) alternate. An alternation
is recorded as an ``agent_clone`` event and an audit entry, and logged, at most once per
:data:`REPORT_EVERY_S` per agent, instead of being merged silently.
"""

from __future__ import annotations

import logging

import redis
from sqlalchemy.orm import Session

from server.models import Event
from server.services import audit

log = logging.getLogger(__name__)

INSTANCE_KEY = "aami:instance:{}"
REPLACED_KEY = "aami:instance-replaced:{}"
REPORTED_KEY = "aami:clone-reported:{}"
# How long an agent's instance ids are remembered after its last heartbeat.
INSTANCE_TTL_S = 7 * 86400
# One report per agent per hour: clones alternate at every heartbeat.
REPORT_EVERY_S = 3600
EVENT_KIND = "agent_clone"


def swap_instance(pipe: redis.client.Pipeline, agent_id: str, instance_id: str) -> None:
    """Queue on ``pipe`` the swap whose reply is the previous instance id (or None)."""
    pipe.set(INSTANCE_KEY.format(agent_id), instance_id, get=True, ex=INSTANCE_TTL_S)


def is_new_alternation(client: redis.Redis, agent_id: str, previous: str, current: str) -> bool:
    """After ``agent_id``'s instance changed from ``previous`` to ``current``: whether
    ``current`` had been replaced before (two instances alternate) and this is the first
    report in :data:`REPORT_EVERY_S`."""
    replaced = REPLACED_KEY.format(agent_id)
    with client.pipeline(transaction=False) as pipe:
        pipe.sismember(replaced, current)
        pipe.sadd(replaced, previous)
        pipe.expire(replaced, INSTANCE_TTL_S)
        came_back, _, _ = pipe.execute()
    if not came_back:
        return False
    return bool(client.set(REPORTED_KEY.format(agent_id), current, nx=True, ex=REPORT_EVERY_S))


def record_clone(session: Session, agent_id: str, previous: str, current: str) -> Event:
    """The event and audit entry for a suspected clone, added to ``session``."""
    message = (
        f"two installations alternate as agent {agent_id} (instances {previous[:12]} and "
        f"{current[:12]}): a cloned host or a copied state directory. Give one of them a "
        "new id (remove /etc/aami/agent-id and its state directory there)."
    )
    log.warning("suspected clone of an agent", extra={
        "agent_id": agent_id, "instances": [previous, current]})
    audit.record(session, "server", "agent.clone_suspected", agent_id,
                 {"instances": [previous, current]})
    event = Event(kind=EVENT_KIND, target_id=agent_id, previous=previous[:32],
                  current=current[:32], message=message)
    session.add(event)
    return event


def check_instance(
    client: redis.Redis, session: Session, agent_id: str, previous: str | None, current: str
) -> bool:
    """Note a heartbeat's instance change; True (and committed) when it revealed a clone."""
    if previous is None or previous == current:
        return False
    if not is_new_alternation(client, agent_id, previous, current):
        log.info("agent instance changed (reinstalled?)",
                 extra={"agent_id": agent_id, "instances": [previous, current]})
        return False
    record_clone(session, agent_id, previous, current)
    session.commit()
    return True
