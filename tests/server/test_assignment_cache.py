"""The per-process cache of assignments (server/services/assignments.py).

Heartbeats, result batches and long-polls read the checks of their agent from a cache
filed under the policy serial: these tests hold it to giving what a fresh computation
would give, at once after any change, and to reading the checks once per serial.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from server import create_app
from server.db import get_database
from server.services import tokens
from server.services.assignments import assignment_for, cache_for, target_and_serial
from server.services.policy import current_serial
from tests.server.conftest import bearer, new_agent_id

DUMMY = ["/usr/lib/nagios/plugins/check_dummy", "0"]


@pytest.fixture
def make_check(client, admin_headers):
    def make(check_id, **fields):
        body = {"id": check_id, "command": DUMMY, "interval": "60s", "timeout": "10s", **fields}
        reply = client.post("/api/v1/checks", json=body, headers=admin_headers)
        assert reply.status_code == 201, reply.get_json()

    return make


def _beat(client, agent):
    reply = client.post(f"/api/v1/agents/{agent['agent_id']}/heartbeat",
                        json={"version": "test"}, headers=bearer(agent["access_token"]))
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()["config_version"]


def _etag(client, agent):
    reply = client.get(f"/api/v1/checks/target/{agent['agent_id']}",
                       headers=bearer(agent["access_token"]))
    assert reply.status_code == 200, reply.get_json()
    return reply.headers["ETag"].strip('"'), [c["id"] for c in reply.get_json()["checks"]]


def _serial(app):
    with get_database(app).sessions() as session:
        return current_serial(session)


def _loads(app):
    with get_database(app).sessions() as session:
        return cache_for(session).loads


def test_heartbeats_read_the_checks_once_per_policy_serial(app, client, admin_headers,
                                                           register, make_check):
    agent = register(agent_id=new_agent_id())
    for n in range(3):
        make_check(f"c{n}", assign={"target_ids": [agent["agent_id"]]})
    versions = {_beat(client, agent) for _ in range(20)}
    assert len(versions) == 1
    assert _loads(app) == 1

    reply = client.patch("/api/v1/checks/c1", json={"command": [*DUMMY, "changed"]},
                         headers=admin_headers)
    assert reply.status_code == 200
    changed = _beat(client, agent)
    assert changed not in versions
    assert _loads(app) == 2
    # The heartbeat and the assignment agree on the version: no needless refetch.
    assert _etag(client, agent) == (changed, ["c0", "c1", "c2"])


def test_a_label_change_reaches_the_next_heartbeat(app, client, admin_headers, register,
                                                   make_check):
    agent = register(agent_id=new_agent_id(), labels={"role": "web"})
    make_check("db-only", assign={"labels": {"role": "db"}})
    before = _beat(client, agent)
    assert _etag(client, agent) == (before, [])

    reply = client.patch(f"/api/v1/targets/{agent['agent_id']}",
                         json={"labels": {"role": "db"}}, headers=admin_headers)
    assert reply.status_code == 200, reply.get_json()
    after = _beat(client, agent)
    assert after != before
    assert _etag(client, agent) == (after, ["db-only"])


def test_the_agents_own_labels_changing_at_registration_reach_the_next_heartbeat(
    app, client, register, make_check
):
    key = "k" * 32
    agent = register(agent_id=new_agent_id(), labels={"role": "web"}, registration_key=key)
    make_check("db-only", assign={"labels": {"role": "db"}})
    make_check("db-secret", assign={"labels": {"role": "db"}}, env={"PGPASSWORD": "x"})
    before = _beat(client, agent)
    serial_before = _serial(app)
    again = register(agent_id=agent["agent_id"], labels={"role": "db"}, registration_key=key)
    # A new serial: signed policies carry it, and agents refuse one that does not grow.
    assert _serial(app) > serial_before
    after = _beat(client, again)
    assert after != before
    # The agent's own label brings the plain check, never the one carrying a secret.
    assert _etag(client, again) == (after, ["db-only"])


def test_result_batches_are_checked_against_the_current_assignment(app, client, admin_headers,
                                                                   register, make_check):
    agent = register(agent_id=new_agent_id())
    make_check("disk", assign={"target_ids": [agent["agent_id"]]})

    def post():
        result = {"result_id": new_agent_id(), "check_id": "disk", "status": "ok",
                  "exit_code": 0, "executed_at": datetime.now(UTC).isoformat()}
        reply = client.post(f"/api/v1/agents/{agent['agent_id']}/check-results",
                            json={"results": [result]}, headers=bearer(agent["access_token"]))
        assert reply.status_code == 202, reply.get_json()
        return reply.get_json()

    assert post()["accepted"] == 1
    client.patch("/api/v1/checks/disk", json={"enabled": False}, headers=admin_headers)
    refused = post()
    assert refused["accepted"] == 0 and len(refused["rejected"]) == 1


def test_apps_on_different_databases_do_not_share_a_cache(tmp_path, migrated_database):
    import shutil

    versions = []
    for name, command in (("one", "first"), ("two", "second")):
        data_dir = tmp_path / name
        data_dir.mkdir()
        shutil.copy(migrated_database, data_dir / "aami.db")
        app = create_app({"DATA_DIR": str(data_dir), "LOG_LEVEL": "warning"})
        client = app.test_client()
        with get_database(app).session() as session:
            admin = tokens.create_admin_token(session, name="ops", role="admin").secret
            bootstrap = tokens.create_bootstrap_token(session, name="t").secret
        agent_id = "11111111-1111-4111-8111-111111111111"  # the same id in both
        reply = client.post("/api/v1/bootstrap-tokens/register",
                            json={"token": bootstrap, "agent_id": agent_id, "hostname": "h"})
        agent = reply.get_json()
        # Same serial in both databases (one check each), different commands.
        reply = client.post("/api/v1/checks", headers=bearer(admin), json={
            "id": "c", "command": [*DUMMY, command], "interval": "60s", "timeout": "10s",
            "assign": {"target_ids": [agent_id]}})
        assert reply.status_code == 201
        versions.append(_beat(client, agent))
    assert versions[0] != versions[1]


def test_callers_cannot_change_the_cached_assignment(app, register, make_check):
    agent = register(agent_id=new_agent_id())
    make_check("disk", assign={"target_ids": [agent["agent_id"]]})
    with get_database(app).sessions() as session:
        target, serial = target_and_serial(session, agent["agent_id"])
        first = assignment_for(session, target, serial)
        first["checks"][0]["command"].append("tampered")  # a caller's bug must stay local
        first["checks"][0]["name"] = "tampered"
        first["commands"] = ["x"]
        again = assignment_for(session, target, serial)
    assert again["checks"][0]["name"] == "disk"
    assert "tampered" not in again["checks"][0]["command"]
    assert "commands" not in again
