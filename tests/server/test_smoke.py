from tests.server.conftest import bearer


def test_registered_agent_fetches_its_assignment(client, register, admin_headers):
    agent = register()
    check = {
        "id": "load",
        "command": ["/usr/lib/nagios/plugins/check_load", "-w", "5,5,5", "-c", "9,9,9"],
        "interval": "10s",
        "timeout": "5s",
        "assign": {"target_ids": [agent["agent_id"]]},
    }
    assert client.post("/api/v1/checks", json=check, headers=admin_headers).status_code == 201
    reply = client.get(
        f"/api/v1/checks/target/{agent['agent_id']}", headers=bearer(agent["access_token"])
    )
    assert reply.status_code == 200
    assert [c["id"] for c in reply.get_json()["checks"]] == ["load"]
    again = client.get(
        f"/api/v1/checks/target/{agent['agent_id']}",
        headers={**bearer(agent["access_token"]), "If-None-Match": reply.headers["ETag"]},
    )
    assert again.status_code == 304
