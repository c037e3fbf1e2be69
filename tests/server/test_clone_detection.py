"""Clone detection: two installations alternating under one agent id raise an event and an
audit entry instead of being merged (server/services/clones.py)."""

from __future__ import annotations

from sqlalchemy import select

from server.db import get_database
from server.models import AuditLog, Event
from tests.server.conftest import bearer, new_agent_id

HOST_A = "a" * 32
HOST_B = "b" * 32
HOST_C = "c" * 32


def _beat(client, agent, instance_id):
    reply = client.post(f"/api/v1/agents/{agent['agent_id']}/heartbeat",
                        json={"version": "0.1.0", "instance_id": instance_id},
                        headers=bearer(agent["access_token"]))
    assert reply.status_code == 200, reply.get_json()


def _clone_events(app, agent_id):
    with get_database(app).session() as session:
        return [(e.previous, e.current) for e in session.scalars(
            select(Event).where(Event.kind == "agent_clone", Event.target_id == agent_id))]


def _clone_audits(app, agent_id):
    with get_database(app).session() as session:
        return list(session.scalars(select(AuditLog.action).where(
            AuditLog.action == "agent.clone_suspected", AuditLog.subject == agent_id)))


def test_two_alternating_instances_raise_one_clone_event(app, client, register, caplog):
    agent = register(agent_id=new_agent_id())
    for instance in (HOST_A, HOST_B, HOST_A, HOST_B, HOST_A):
        _beat(client, agent, instance)
    assert _clone_events(app, agent["agent_id"]) == [(HOST_B, HOST_A)]
    assert _clone_audits(app, agent["agent_id"]) == ["agent.clone_suspected"]
    assert any(r.getMessage() == "suspected clone of an agent" for r in caplog.records)


def test_a_restart_and_a_reinstall_are_no_clone(app, client, register):
    agent = register(agent_id=new_agent_id())
    for instance in (HOST_A, HOST_A, HOST_B, HOST_B, HOST_C):  # restart, reinstall, reinstall
        _beat(client, agent, instance)
    assert _clone_events(app, agent["agent_id"]) == []


def test_heartbeats_without_an_instance_id_are_accepted(app, client, register):
    agent = register(agent_id=new_agent_id())
    reply = client.post(f"/api/v1/agents/{agent['agent_id']}/heartbeat",
                        json={"version": "0.1.0"}, headers=bearer(agent["access_token"]))
    assert reply.status_code == 200
    assert _clone_events(app, agent["agent_id"]) == []


def test_clones_of_one_agent_do_not_implicate_another(app, client, register):
    first = register(agent_id=new_agent_id())
    second = register(agent_id=new_agent_id())
    for instance in (HOST_A, HOST_B, HOST_A):
        _beat(client, first, instance)
    _beat(client, second, HOST_B)
    _beat(client, second, HOST_A)
    assert _clone_events(app, second["agent_id"]) == []
