"""Targets for operators: /api/v1/targets (pre-register, list, get, patch, delete, states)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from server.services import liveness
from tests.server.conftest import assert_error, bearer, new_agent_id

TARGETS = "/api/v1/targets"


@pytest.fixture
def preregister(client, admin_headers):
    def make(**fields):
        reply = client.post(TARGETS, json={"hostname": "host", **fields}, headers=admin_headers)
        assert reply.status_code == 201, reply.get_json()
        return reply.get_json()

    return make


def _beat(client, agent):
    reply = client.post(
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        json={"version": "0.1.0"},
        headers=bearer(agent["access_token"]),
    )
    return reply


def _hostnames(client, admin_headers, **query):
    reply = client.get(TARGETS, headers=admin_headers, query_string=query)
    assert reply.status_code == 200, reply.get_json()
    return [t["hostname"] for t in reply.get_json()]


def test_preregistered_target_is_pending_with_the_operators_fields(
    client, admin_headers, make_group
):
    make_group("db")
    agent_id = new_agent_id()
    reply = client.post(
        TARGETS,
        json={
            "id": agent_id,
            "hostname": "db-1",
            "ip_address": "10.0.0.7",
            "group_id": "db",
            "labels": {"role": "primary"},
        },
        headers=admin_headers,
    )
    assert reply.status_code == 201, reply.get_json()
    created = reply.get_json()
    assert created["id"] == agent_id
    assert created["status"] == "pending"
    assert created["last_seen"] is None
    assert created["registered_at"] is None
    fetched = client.get(f"{TARGETS}/{agent_id}", headers=admin_headers).get_json()
    assert fetched == created
    assert (fetched["group_id"], fetched["labels"]) == ("db", {"role": "primary"})


def test_preregister_without_id_gets_a_uuid(preregister):
    made = preregister(hostname="anon")
    assert str(uuid.UUID(made["id"])) == made["id"]


def test_preregister_an_existing_id_is_a_conflict(client, admin_headers, preregister):
    agent_id = new_agent_id()
    preregister(id=agent_id, hostname="first")
    again = client.post(TARGETS, json={"id": agent_id, "hostname": "second"}, headers=admin_headers)
    assert_error(again, 409, "conflict", mentions=agent_id)
    assert client.get(f"{TARGETS}/{agent_id}", headers=admin_headers).get_json()["hostname"] == (
        "first"
    )


def test_preregister_into_an_unknown_group_is_refused(client, admin_headers):
    reply = client.post(TARGETS, json={"hostname": "h", "group_id": "nope"}, headers=admin_headers)
    assert_error(reply, 409, "unknown_group", mentions="nope")


def test_list_targets_filters_by_status_group_and_hostname(
    client, admin_headers, make_group, preregister, register
):
    make_group("web")
    preregister(hostname="web-1", group_id="web")
    preregister(hostname="web-2", group_id="web")
    preregister(hostname="db-1")
    online = register(hostname="web-3")
    assert _beat(client, online).status_code == 200

    assert _hostnames(client, admin_headers) == ["db-1", "web-1", "web-2", "web-3"]
    assert _hostnames(client, admin_headers, status="online") == ["web-3"]
    assert _hostnames(client, admin_headers, status="pending") == ["db-1", "web-1", "web-2"]
    assert _hostnames(client, admin_headers, group_id="web") == ["web-1", "web-2"]
    assert _hostnames(client, admin_headers, hostname="web") == ["web-1", "web-2", "web-3"]
    assert _hostnames(client, admin_headers, hostname="web", status="pending", group_id="web") == [
        "web-1",
        "web-2",
    ]


def test_list_targets_pages_with_limit_and_offset(client, admin_headers, preregister):
    for n in range(5):
        preregister(hostname=f"h{n}")
    assert _hostnames(client, admin_headers, limit=2) == ["h0", "h1"]
    assert _hostnames(client, admin_headers, limit=2, offset=2) == ["h2", "h3"]
    assert _hostnames(client, admin_headers, offset=4) == ["h4"]


def test_list_targets_rejects_an_unknown_status(client, admin_headers):
    reply = client.get(TARGETS, headers=admin_headers, query_string={"status": "asleep"})
    assert_error(reply, 422, "invalid_fields", mentions="status")


def test_get_unknown_target_is_404(client, admin_headers):
    missing = new_agent_id()
    reply = client.get(f"{TARGETS}/{missing}", headers=admin_headers)
    assert_error(reply, 404, "target_not_found", mentions=missing)


def test_read_only_token_can_list_targets(client, readonly_headers, preregister):
    preregister(hostname="seen")
    reply = client.get(TARGETS, headers=readonly_headers)
    assert reply.status_code == 200
    assert [t["hostname"] for t in reply.get_json()] == ["seen"]


def test_patch_target_changes_only_the_fields_sent(client, admin_headers, make_group, preregister):
    make_group("web")
    made = preregister(hostname="web-1", group_id="web", labels={"role": "a"})
    reply = client.patch(
        f"{TARGETS}/{made['id']}", json={"labels": {"role": "b"}}, headers=admin_headers
    )
    assert reply.status_code == 200, reply.get_json()
    patched = reply.get_json()
    assert patched["labels"] == {"role": "b"}
    assert (patched["hostname"], patched["group_id"], patched["maintenance"]) == (
        "web-1",
        "web",
        False,
    )
    reply = client.patch(
        f"{TARGETS}/{made['id']}",
        json={"group_id": None, "maintenance": True},
        headers=admin_headers,
    )
    assert reply.status_code == 200, reply.get_json()
    stored = client.get(f"{TARGETS}/{made['id']}", headers=admin_headers).get_json()
    assert (stored["group_id"], stored["maintenance"], stored["labels"]) == (
        None,
        True,
        {"role": "b"},
    )


def test_patch_target_into_an_unknown_group_is_refused(client, admin_headers, preregister):
    made = preregister()
    reply = client.patch(
        f"{TARGETS}/{made['id']}", json={"group_id": "nope"}, headers=admin_headers
    )
    assert_error(reply, 409, "unknown_group", mentions="nope")


def test_patch_unknown_target_is_404(client, admin_headers):
    reply = client.patch(
        f"{TARGETS}/{new_agent_id()}", json={"hostname": "x"}, headers=admin_headers
    )
    assert_error(reply, 404, "target_not_found")


def test_patching_labels_changes_what_the_agent_runs(client, admin_headers, register):
    agent = register()
    check = {"id": "pg", "command": ["/usr/bin/check_pg"], "assign": {"labels": {"role": "db"}}}
    assert client.post("/api/v1/checks", json=check, headers=admin_headers).status_code == 201
    url = f"/api/v1/checks/target/{agent['agent_id']}"
    before = client.get(url, headers=bearer(agent["access_token"]))
    assert before.get_json()["checks"] == []
    client.patch(
        f"{TARGETS}/{agent['agent_id']}", json={"labels": {"role": "db"}}, headers=admin_headers
    )
    after = client.get(url, headers=bearer(agent["access_token"]))
    assert [c["id"] for c in after.get_json()["checks"]] == ["pg"]
    assert after.headers["ETag"] != before.headers["ETag"]


def test_deleted_targets_agent_gets_404_on_heartbeat(app, client, admin_headers, register):
    agent = register(agent_id=new_agent_id())
    assert _beat(client, agent).status_code == 200
    reply = client.delete(f"{TARGETS}/{agent['agent_id']}", headers=admin_headers)
    assert reply.status_code == 204
    assert_error(
        client.get(f"{TARGETS}/{agent['agent_id']}", headers=admin_headers),
        404,
        ("target_not_found"),
    )
    assert_error(_beat(client, agent), 404, "target_not_found")
    redis = app.extensions["aami.redis"]
    assert redis.zscore(liveness.LAST_SEEN_KEY, agent["agent_id"]) is None
    # Its credentials went with it: the agent must register again.
    refresh = client.post(
        f"/api/v1/agents/{agent['agent_id']}/token",
        json={"refresh_token": agent["refresh_token"]},
    )
    assert_error(refresh, 401, "invalid_refresh_token")


def test_delete_unknown_target_is_404(client, admin_headers):
    assert_error(
        client.delete(f"{TARGETS}/{new_agent_id()}", headers=admin_headers), 404, "target_not_found"
    )


def test_target_check_states_and_result_history(client, admin_headers, register):
    agent = register()
    for check_id in ("disk", "load"):
        check = {
            "id": check_id,
            "command": [f"/usr/bin/check_{check_id}"],
            "assign": {"target_ids": [agent["agent_id"]]},
        }
        assert client.post("/api/v1/checks", json=check, headers=admin_headers).status_code == 201
    start = datetime.now(UTC) - timedelta(hours=1)  # inside the window the server accepts
    results = [
        {
            "result_id": str(uuid.uuid4()),
            "check_id": check_id,
            "status": status,
            "exit_code": code,
            "output": f"{check_id} {status}",
            "executed_at": (start + timedelta(minutes=minute)).isoformat(),
        }
        for minute, (check_id, status, code) in enumerate(
            [("disk", "ok", 0), ("load", "ok", 0), ("disk", "critical", 2)]
        )
    ]
    submitted = client.post(
        f"/api/v1/agents/{agent['agent_id']}/check-results",
        json={"results": results},
        headers=bearer(agent["access_token"]),
    )
    assert submitted.status_code == 202, submitted.get_json()

    states = client.get(f"{TARGETS}/{agent['agent_id']}/checks", headers=admin_headers).get_json()
    assert [(s["check_id"], s["status"], s["exit_code"]) for s in states] == [
        ("disk", "critical", 2),
        ("load", "ok", 0),
    ]
    history = client.get(
        f"{TARGETS}/{agent['agent_id']}/results",
        headers=admin_headers,
        query_string={"check_id": "disk"},
    ).get_json()
    assert [r["status"] for r in history] == ["critical", "ok"]  # newest first
    limited = client.get(
        f"{TARGETS}/{agent['agent_id']}/results", headers=admin_headers, query_string={"limit": 1}
    ).get_json()
    assert [r["output"] for r in limited] == ["disk critical"]


def test_states_and_results_of_an_unknown_target_are_404(client, admin_headers):
    missing = new_agent_id()
    for what in ("checks", "results"):
        reply = client.get(f"{TARGETS}/{missing}/{what}", headers=admin_headers)
        assert_error(reply, 404, "target_not_found")
