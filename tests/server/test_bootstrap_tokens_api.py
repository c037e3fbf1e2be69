"""Bootstrap tokens for operators: /api/v1/bootstrap-tokens (create, list, revoke)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.server.conftest import assert_error, bearer, new_agent_id

TOKENS = "/api/v1/bootstrap-tokens"
REGISTER = "/api/v1/bootstrap-tokens/register"


@pytest.fixture
def create_token(client, admin_headers):
    def create(**fields):
        reply = client.post(TOKENS, json={"name": "fleet", **fields}, headers=admin_headers)
        assert reply.status_code == 201, reply.get_json()
        return reply.get_json()

    return create


def test_token_secret_is_shown_once_at_creation(client, admin_headers, create_token):
    created = create_token()
    secret = created["token"]
    assert secret.startswith("aami_bt_")
    assert created["prefix"] == secret[:14]
    assert len(secret) > len(created["prefix"]) + 20
    listed = client.get(TOKENS, headers=admin_headers)
    assert listed.status_code == 200
    assert [t["id"] for t in listed.get_json()] == [created["id"]]
    assert "token" not in listed.get_json()[0]
    assert secret not in listed.get_data(as_text=True)


def test_created_token_registers_an_agent(client, create_token):
    secret = create_token()["token"]
    reply = client.post(REGISTER, json={"token": secret, "hostname": "web-1"})
    assert reply.status_code == 201, reply.get_json()


def test_create_token_with_options(client, admin_headers, make_group, create_token):
    make_group("web")
    agent_id = new_agent_id()
    before = datetime.now(UTC)
    created = create_token(
        name="web fleet",
        group_id="web",
        labels={"env": "prod"},
        max_uses=5,
        expires_in="1h",
        agent_id=agent_id,
    )
    assert (created["name"], created["group_id"], created["labels"]) == (
        "web fleet",
        "web",
        {"env": "prod"},
    )
    assert (created["max_uses"], created["uses"], created["agent_id"]) == (5, 0, agent_id)
    expires = datetime.fromisoformat(created["expires_at"])
    assert before + timedelta(minutes=59) < expires < before + timedelta(minutes=61)
    assert created["revoked_at"] is None


def test_create_token_for_an_unknown_group_is_refused(client, admin_headers):
    reply = client.post(TOKENS, json={"name": "x", "group_id": "nope"}, headers=admin_headers)
    assert_error(reply, 409, "unknown_group", mentions="nope")
    assert client.get(TOKENS, headers=admin_headers).get_json() == []


def test_token_list_counts_uses(client, admin_headers, create_token):
    created = create_token(max_uses=3)
    for _ in range(2):
        client.post(REGISTER, json={"token": created["token"], "hostname": "h"})
    [listed] = client.get(TOKENS, headers=admin_headers).get_json()
    assert (listed["uses"], listed["max_uses"]) == (2, 3)


@pytest.mark.parametrize("by", ["id", "prefix"])
def test_revoke_token_by_id_or_prefix(client, admin_headers, create_token, by):
    created = create_token()
    reply = client.delete(f"{TOKENS}/{created[by]}", headers=admin_headers)
    assert reply.status_code == 200, reply.get_json()
    revoked = reply.get_json()
    assert revoked["id"] == created["id"]
    assert revoked["revoked_at"] is not None
    assert "token" not in revoked
    [listed] = client.get(TOKENS, headers=admin_headers).get_json()
    assert listed["revoked_at"] == revoked["revoked_at"]
    refused = client.post(REGISTER, json={"token": created["token"], "hostname": "h"})
    assert_error(refused, 401, "invalid_bootstrap_token", mentions="revoked")


def test_revoking_twice_keeps_the_first_revocation_time(client, admin_headers, create_token):
    created = create_token()
    first = client.delete(f"{TOKENS}/{created['id']}", headers=admin_headers).get_json()
    second = client.delete(f"{TOKENS}/{created['id']}", headers=admin_headers).get_json()
    assert second["revoked_at"] == first["revoked_at"]


def test_revoke_unknown_token_is_404(client, admin_headers):
    reply = client.delete(f"{TOKENS}/aami_bt_nope", headers=admin_headers)
    assert_error(reply, 404, "not_found", mentions="aami_bt_nope")


def test_revoking_a_token_leaves_registered_agents_working(client, admin_headers, create_token):
    created = create_token()
    agent = client.post(REGISTER, json={"token": created["token"], "hostname": "h"}).get_json()
    client.delete(f"{TOKENS}/{created['id']}", headers=admin_headers)
    beat = client.post(
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        json={"version": "0.1.0"},
        headers=bearer(agent["access_token"]),
    )
    assert beat.status_code == 200
    refresh = client.post(
        f"/api/v1/agents/{agent['agent_id']}/token", json={"refresh_token": agent["refresh_token"]}
    )
    assert refresh.status_code == 200


def test_read_only_token_lists_but_cannot_create_or_revoke(client, readonly_headers, create_token):
    created = create_token()
    listed = client.get(TOKENS, headers=readonly_headers)
    assert listed.status_code == 200
    assert created["token"] not in json.dumps(listed.get_json())
    assert_error(
        client.post(TOKENS, json={"name": "x"}, headers=readonly_headers), 403, ("read_only_token")
    )
    assert_error(
        client.delete(f"{TOKENS}/{created['id']}", headers=readonly_headers), 403, "read_only_token"
    )
