"""POST /api/v1/targets/{id}/checks/{check_id}/run: force a check on its agent."""

from __future__ import annotations

from tests.server.conftest import bearer
from tests.server.results_helpers import create_check


def test_forced_check_reaches_the_agent_once_in_its_heartbeat(client, register, admin_headers):
    agent = register()
    create_check(client, admin_headers, "load", agent["agent_id"])
    reply = client.post(
        f"/api/v1/targets/{agent['agent_id']}/checks/load/run", headers=admin_headers
    )
    assert reply.status_code == 202
    command_id = reply.get_json()["id"]

    def heartbeat():
        return client.post(
            f"/api/v1/agents/{agent['agent_id']}/heartbeat",
            json={"version": "t"},
            headers=bearer(agent["access_token"]),
        ).get_json()["commands"]

    assert heartbeat() == [{"id": command_id, "type": "run_check", "check_id": "load"}]
    assert heartbeat() == []


def test_forced_check_wakes_the_long_poll(client, register, admin_headers):
    agent = register()
    create_check(client, admin_headers, "load", agent["agent_id"])
    url = f"/api/v1/checks/target/{agent['agent_id']}"
    etag = client.get(url, headers=bearer(agent["access_token"])).headers["ETag"]
    client.post(f"/api/v1/targets/{agent['agent_id']}/checks/load/run", headers=admin_headers)
    reply = client.get(
        f"{url}?wait=5", headers={**bearer(agent["access_token"]), "If-None-Match": etag}
    )
    assert reply.status_code == 200
    assert [c["check_id"] for c in reply.get_json()["commands"]] == ["load"]


def test_forcing_an_unassigned_check_is_a_conflict(client, register, admin_headers):
    agent = register()
    reply = client.post(
        f"/api/v1/targets/{agent['agent_id']}/checks/nope/run", headers=admin_headers
    )
    assert reply.status_code == 409
    assert "not assigned" in reply.get_json()["error"]["message"]


def test_read_only_token_cannot_force_a_check(client, register, admin_headers, readonly_headers):
    agent = register()
    create_check(client, admin_headers, "load", agent["agent_id"])
    reply = client.post(
        f"/api/v1/targets/{agent['agent_id']}/checks/load/run", headers=readonly_headers
    )
    assert reply.status_code == 403
