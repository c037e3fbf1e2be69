"""POST /api/v1/agents/{id}/heartbeat: liveness in Redis, transitions in the database."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import select

from server.db import get_database
from server.models import Event
from server.security.jwt_tokens import JwtConfig, issue_access_token
from server.services import commands, liveness
from tests.server.conftest import assert_error, bearer, new_agent_id


def _beat(client, agent, **facts):
    return client.post(
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        json={"version": "0.1.0", **facts},
        headers=bearer(agent["access_token"]),
    )


def _status_events(app, agent_id):
    with get_database(app).session() as session:
        return [
            (e.previous, e.current)
            for e in session.scalars(
                select(Event).where(Event.kind == "target_status", Event.target_id == agent_id)
            )
        ]


def _redis(app):
    return app.extensions["aami.redis"]


def test_first_heartbeat_puts_the_agent_online(app, client, register, admin_headers):
    agent = register(agent_id=new_agent_id())
    reply = _beat(client, agent, uptime_s=12.5, spool_depth=3, running_checks=1)
    assert reply.status_code == 200, reply.get_json()

    redis = _redis(app)
    assert redis.zscore(liveness.LAST_SEEN_KEY, agent["agent_id"]) is not None
    facts = json.loads(redis.hget(liveness.FACTS_KEY, agent["agent_id"]))
    assert facts["version"] == "0.1.0"
    assert facts["spool_depth"] == 3
    target = client.get(f"/api/v1/targets/{agent['agent_id']}", headers=admin_headers).get_json()
    assert target["status"] == "online"
    assert target["last_seen"] is not None
    assert target["facts"]["uptime_s"] == 12.5


def test_heartbeats_write_one_status_event_on_the_transition_only(app, client, register):
    agent = register(agent_id=new_agent_id())
    for _ in range(4):
        assert _beat(client, agent).status_code == 200
    assert _status_events(app, agent["agent_id"]) == [("pending", "online")]


def test_later_heartbeats_move_last_seen_in_redis(app, client, register, admin_headers):
    agent = register(agent_id=new_agent_id())
    _beat(client, agent)
    first = _redis(app).zscore(liveness.LAST_SEEN_KEY, agent["agent_id"])
    _beat(client, agent)
    second = _redis(app).zscore(liveness.LAST_SEEN_KEY, agent["agent_id"])
    assert second >= first
    target = client.get(f"/api/v1/targets/{agent['agent_id']}", headers=admin_headers).get_json()
    # The API reports Redis' last-seen time, not the database's transition time.
    reported = datetime.fromisoformat(target["last_seen"])
    assert abs(reported.timestamp() - second) < 0.001


def test_heartbeat_reply_carries_the_assignment_etag_as_config_version(
    client, register, admin_headers
):
    agent = register(agent_id=new_agent_id())
    check = {
        "id": "disk",
        "command": ["/usr/lib/nagios/plugins/check_disk", "-w", "20%"],
        "assign": {"target_ids": [agent["agent_id"]]},
    }
    assert client.post("/api/v1/checks", json=check, headers=admin_headers).status_code == 201

    def etag():
        reply = client.get(
            f"/api/v1/checks/target/{agent['agent_id']}", headers=bearer(agent["access_token"])
        )
        assert reply.status_code == 200
        return reply.headers["ETag"].strip('"')

    beat = _beat(client, agent).get_json()
    assert beat["config_version"] == etag()
    assert beat["heartbeat_interval"] == 30
    assert beat["server_time"].endswith("+00:00")
    assert beat["commands"] == []

    changed = client.patch("/api/v1/checks/disk", json={"interval": "5m"}, headers=admin_headers)
    assert changed.status_code == 200, changed.get_json()
    after = _beat(client, agent).get_json()["config_version"]
    assert after != beat["config_version"]
    assert after == etag()


def test_heartbeat_delivers_queued_commands_once(app, client, register):
    agent = register(agent_id=new_agent_id())
    queued = [
        commands.queue_command(_redis(app), agent["agent_id"], {"type": "run_check", "check_id": c})
        for c in ("disk", "load")
    ]
    other = register(agent_id=new_agent_id())
    commands.queue_command(_redis(app), other["agent_id"], {"type": "run_check", "check_id": "x"})

    delivered = _beat(client, agent).get_json()["commands"]
    assert delivered == queued
    assert _beat(client, agent).get_json()["commands"] == []
    # Another agent's command stays queued for that agent.
    assert [c["check_id"] for c in _beat(client, other).get_json()["commands"]] == ["x"]


def test_heartbeat_for_an_unknown_target_is_404_and_records_nothing(app, client):
    settings = app.extensions["aami.settings"]
    agent_id = new_agent_id()
    token = issue_access_token(
        JwtConfig(
            settings.SECRET_KEY,
            settings.JWT_ISSUER,
            settings.JWT_AUDIENCE,
            settings.ACCESS_TOKEN_TTL,
        ),
        agent_id,
    )
    reply = client.post(
        f"/api/v1/agents/{agent_id}/heartbeat", json={"version": "0.1.0"}, headers=bearer(token)
    )
    assert_error(reply, 404, "target_not_found", mentions=agent_id)
    # A stranger's heartbeat must not leave liveness entries for the sweep to chase.
    assert _redis(app).zscore(liveness.LAST_SEEN_KEY, agent_id) is None
    assert _redis(app).hget(liveness.FACTS_KEY, agent_id) is None
