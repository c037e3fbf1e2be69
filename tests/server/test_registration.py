"""POST /api/v1/bootstrap-tokens/register: the matching table, the identity guard, token rules."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from server.db import get_database
from server.models import BootstrapToken, Target
from tests.server.conftest import assert_error, bearer, new_agent_id

REGISTER = "/api/v1/bootstrap-tokens/register"


def _target(client, admin_headers, agent_id):
    reply = client.get(f"/api/v1/targets/{agent_id}", headers=admin_headers)
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()


def _refresh(client, agent_id, refresh_token):
    return client.post(f"/api/v1/agents/{agent_id}/token", json={"refresh_token": refresh_token})


def _heartbeat(client, agent):
    return client.post(
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        json={"version": "0.1.0"},
        headers=bearer(agent["access_token"]),
    )


def _target_count(app):
    with get_database(app).session() as session:
        return len(list(session.scalars(select(Target.id))))


def _token_uses(app):
    with get_database(app).session() as session:
        return [row.uses for row in session.scalars(select(BootstrapToken))]


# --- the four matching rows ------------------------------------------------------------------


def test_register_new_agent_with_id_creates_target_with_that_id(
    client, make_bootstrap_token, admin_headers
):
    agent_id = new_agent_id()
    reply = client.post(
        REGISTER,
        json={
            "token": make_bootstrap_token(),
            "agent_id": agent_id,
            "hostname": "web-1",
            "ip_address": "10.0.0.5",
            "metadata": {"os": "debian 12"},
            "agent_version": "0.1.0",
        },
    )
    assert reply.status_code == 201, reply.get_json()
    body = reply.get_json()
    assert body["agent_id"] == agent_id
    assert body["token_type"] == "Bearer"
    assert body["refresh_token"].startswith("aami_rt_")
    assert body["heartbeat_interval"] == 30
    target = _target(client, admin_headers, agent_id)
    assert target["hostname"] == "web-1"
    assert target["ip_address"] == "10.0.0.5"
    assert target["metadata"] == {"os": "debian 12"}
    assert target["agent_version"] == "0.1.0"
    assert target["status"] == "pending"
    assert target["registered_at"] is not None


def test_register_without_id_gets_a_server_made_uuid(app, client, register, admin_headers):
    body = register()
    made = uuid.UUID(body["agent_id"])
    assert str(made) == body["agent_id"]
    assert made.version == 4
    assert _target(client, admin_headers, body["agent_id"])["hostname"] == "web-1"
    assert register()["agent_id"] != body["agent_id"]
    assert _target_count(app) == 2


def test_register_normalises_the_spelling_of_the_agent_id(client, register, admin_headers):
    agent_id = new_agent_id()
    body = register(agent_id=agent_id.upper())
    assert body["agent_id"] == agent_id
    assert _target(client, admin_headers, agent_id)["id"] == agent_id


def test_register_with_known_agent_id_and_its_refresh_token_reconnects(
    app, client, register, make_bootstrap_token, admin_headers
):
    first = register(agent_id=new_agent_id())
    reply = client.post(
        REGISTER,
        json={
            "token": make_bootstrap_token(),
            "agent_id": first["agent_id"],
            "hostname": "web-1-renamed",
            "refresh_token": first["refresh_token"],
        },
    )
    assert reply.status_code == 200, reply.get_json()
    again = reply.get_json()
    assert again["agent_id"] == first["agent_id"]
    assert _target_count(app) == 1
    assert _target(client, admin_headers, first["agent_id"])["hostname"] == "web-1-renamed"
    # The new credentials replace the old ones.
    assert _refresh(client, again["agent_id"], again["refresh_token"]).status_code == 200
    assert_error(
        _refresh(client, first["agent_id"], first["refresh_token"]), 401, "invalid_refresh_token"
    )


def test_register_preregistered_target_connects_and_keeps_the_operators_group_and_labels(
    make_group, app, client, make_bootstrap_token, admin_headers
):
    make_group("db")
    make_group("web")
    agent_id = new_agent_id()
    made = client.post(
        "/api/v1/targets",
        json={
            "id": agent_id,
            "hostname": "db-1",
            "group_id": "db",
            "labels": {"role": "primary"},
        },
        headers=admin_headers,
    )
    assert made.status_code == 201, made.get_json()

    reply = client.post(
        REGISTER,
        json={
            "token": make_bootstrap_token(group_id="web", labels={"tier": "gold"}),
            "agent_id": agent_id,
            "hostname": "db-1.example.com",
            "group_id": "web",
            "labels": {"role": "replica", "env": "prod"},
        },
    )
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["agent_id"] == agent_id
    assert _target_count(app) == 1
    target = _target(client, admin_headers, agent_id)
    # What the operator set on the target wins; the agent and its token only add.
    assert target["group_id"] == "db"
    assert target["labels"] == {"role": "primary", "env": "prod", "tier": "gold"}
    # Facts about the host come from the agent.
    assert target["hostname"] == "db-1.example.com"
    assert target["registered_at"] is not None


def test_register_preregistered_target_without_group_joins_the_tokens_group(
    make_group, client, make_bootstrap_token, admin_headers
):
    make_group("web")
    agent_id = new_agent_id()
    made = client.post(
        "/api/v1/targets", json={"id": agent_id, "hostname": "web-9"}, headers=admin_headers
    )
    assert made.status_code == 201
    reply = client.post(
        REGISTER,
        json={"token": make_bootstrap_token(group_id="web"), "agent_id": agent_id, "hostname": "h"},
    )
    assert reply.status_code == 200, reply.get_json()
    assert _target(client, admin_headers, agent_id)["group_id"] == "web"


def test_reregistration_keeps_labels_an_operator_set_and_adds_new_ones(
    client, register, make_bootstrap_token, admin_headers
):
    first = register(agent_id=new_agent_id(), labels={"env": "dev"})
    patched = client.patch(
        f"/api/v1/targets/{first['agent_id']}",
        json={"labels": {"env": "prod"}},
        headers=admin_headers,
    )
    assert patched.status_code == 200
    reply = client.post(
        REGISTER,
        json={
            "token": make_bootstrap_token(),
            "agent_id": first["agent_id"],
            "hostname": "web-1",
            "labels": {"env": "dev", "dc": "dc2"},
            "refresh_token": first["refresh_token"],
        },
    )
    assert reply.status_code == 200, reply.get_json()
    target = _target(client, admin_headers, first["agent_id"])
    assert target["labels"] == {"env": "prod", "dc": "dc2"}


# --- identity-theft guard ----------------------------------------------------------------------


def test_register_known_id_holding_credentials_without_proof_is_refused(
    client, register, make_bootstrap_token
):
    owner = register(agent_id=new_agent_id())
    reply = client.post(
        REGISTER,
        json={"token": make_bootstrap_token(), "agent_id": owner["agent_id"], "hostname": "evil"},
    )
    message = assert_error(reply, 409, "agent_id_in_use", mentions=owner["agent_id"])
    # The message says how to recover: with the refresh token, or a token bound to the id.
    assert "refresh token" in message
    assert f"aami-server token create --agent-id {owner['agent_id']}" in message
    # The rightful owner is untouched.
    assert _heartbeat(client, owner).status_code == 200
    assert _refresh(client, owner["agent_id"], owner["refresh_token"]).status_code == 200


def test_register_known_id_with_a_bootstrap_token_bound_to_it_reconnects(
    client, register, make_bootstrap_token
):
    owner = register(agent_id=new_agent_id())
    bound = make_bootstrap_token(agent_id=owner["agent_id"])
    reply = client.post(
        REGISTER, json={"token": bound, "agent_id": owner["agent_id"], "hostname": "rebuilt"}
    )
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["agent_id"] == owner["agent_id"]
    # Whoever held the old credentials lost them.
    assert_error(
        _refresh(client, owner["agent_id"], owner["refresh_token"]), 401, "invalid_refresh_token"
    )


def test_register_with_a_bound_token_and_no_id_takes_the_bound_id(client, make_bootstrap_token):
    agent_id = new_agent_id()
    reply = client.post(
        REGISTER, json={"token": make_bootstrap_token(agent_id=agent_id), "hostname": "h"}
    )
    assert reply.status_code == 201, reply.get_json()
    assert reply.get_json()["agent_id"] == agent_id


def test_register_another_id_with_a_bound_token_is_refused(client, make_bootstrap_token):
    bound_to = new_agent_id()
    other = new_agent_id()
    reply = client.post(
        REGISTER,
        json={"token": make_bootstrap_token(agent_id=bound_to), "agent_id": other, "hostname": "h"},
    )
    assert_error(reply, 409, "token_bound_elsewhere", mentions=bound_to)


def test_register_with_a_spent_refresh_token_as_proof_is_refused(
    client, register, make_bootstrap_token
):
    owner = register(agent_id=new_agent_id())
    rotated = _refresh(client, owner["agent_id"], owner["refresh_token"])
    assert rotated.status_code == 200
    reply = client.post(
        REGISTER,
        json={
            "token": make_bootstrap_token(),
            "agent_id": owner["agent_id"],
            "hostname": "h",
            "refresh_token": owner["refresh_token"],
        },
    )
    assert_error(reply, 409, "agent_id_in_use")


def test_register_with_another_agents_refresh_token_as_proof_is_refused(
    client, register, make_bootstrap_token
):
    victim = register(agent_id=new_agent_id())
    thief = register(agent_id=new_agent_id())
    reply = client.post(
        REGISTER,
        json={
            "token": make_bootstrap_token(),
            "agent_id": victim["agent_id"],
            "hostname": "h",
            "refresh_token": thief["refresh_token"],
        },
    )
    assert_error(reply, 409, "agent_id_in_use")


# --- what the bootstrap token brings --------------------------------------------------------------


def test_registered_target_inherits_the_tokens_group_and_labels(
    make_group, client, make_bootstrap_token, admin_headers
):
    make_group("web")
    token = make_bootstrap_token(group_id="web", labels={"env": "prod", "team": "ops"})
    reply = client.post(
        REGISTER, json={"token": token, "hostname": "h", "labels": {"env": "dev", "dc": "dc1"}}
    )
    assert reply.status_code == 201, reply.get_json()
    target = _target(client, admin_headers, reply.get_json()["agent_id"])
    assert target["group_id"] == "web"
    # The operator's token outranks the agent's own claim.
    assert target["labels"] == {"env": "prod", "team": "ops", "dc": "dc1"}


def test_register_into_an_unknown_group_is_refused(client, make_bootstrap_token):
    reply = client.post(
        REGISTER, json={"token": make_bootstrap_token(), "hostname": "h", "group_id": "nope"}
    )
    assert_error(reply, 409, "unknown_group", mentions="nope")
    assert reply.get_json()["error"]["fields"] == {"group_id": ["unknown group"]}


# --- use counting -------------------------------------------------------------------------------


def test_token_allows_exactly_max_uses_registrations(app, client, make_bootstrap_token):
    token = make_bootstrap_token(max_uses=3)
    for _ in range(3):
        reply = client.post(REGISTER, json={"token": token, "hostname": "h"})
        assert reply.status_code == 201, reply.get_json()
    refused = client.post(REGISTER, json={"token": token, "hostname": "h"})
    assert_error(refused, 401, "invalid_bootstrap_token", mentions="used 3 of 3 times")
    assert _token_uses(app) == [3]
    assert _target_count(app) == 3


def test_refused_registration_does_not_use_up_the_token(
    app, client, register, make_bootstrap_token
):
    owner = register(agent_id=new_agent_id())
    token = make_bootstrap_token(max_uses=1)
    refused = client.post(
        REGISTER, json={"token": token, "agent_id": owner["agent_id"], "hostname": "h"}
    )
    assert_error(refused, 409, "agent_id_in_use")
    invalid = client.post(REGISTER, json={"token": token, "hostname": "h", "group_id": "nope"})
    assert_error(invalid, 409, "unknown_group")
    assert sorted(_token_uses(app)) == [0, 1]  # the fixture's token, used once by `register`
    reply = client.post(REGISTER, json={"token": token, "hostname": "h"})
    assert reply.status_code == 201, reply.get_json()


# --- refused tokens ------------------------------------------------------------------------------

TOKEN_STATES = ("unknown", "expired", "revoked", "exhausted")
TOKEN_WORDS = {
    "unknown": "unknown",
    "expired": "expired",
    "revoked": "revoked",
    "exhausted": "used",
}


@pytest.mark.parametrize("state", TOKEN_STATES)
def test_register_with_unusable_token_is_refused_saying_why(
    client, make_bootstrap_token, admin_headers, state
):
    if state == "unknown":
        token = "aami_bt_" + uuid.uuid4().hex
    elif state == "expired":
        token = make_bootstrap_token(expires_in=-1)
    elif state == "revoked":
        token = make_bootstrap_token()
        revoked = client.delete(f"/api/v1/bootstrap-tokens/{token[:14]}", headers=admin_headers)
        assert revoked.status_code == 200
    else:
        token = make_bootstrap_token(max_uses=1)
        assert client.post(REGISTER, json={"token": token, "hostname": "h"}).status_code == 201
    reply = client.post(REGISTER, json={"token": token, "hostname": "h"})
    message = assert_error(reply, 401, "invalid_bootstrap_token", mentions=TOKEN_WORDS[state])
    for other, word in TOKEN_WORDS.items():
        if other != state:
            assert word not in message, (state, message)
    assert token not in message  # never echo a secret


def test_retry_after_a_lost_registration_reply_succeeds_with_the_same_key(
    client, make_bootstrap_token
):
    body = {
        "token": make_bootstrap_token(),
        "agent_id": new_agent_id(),
        "hostname": "h",
        "registration_key": "k" * 32,
    }
    assert client.post(REGISTER, json=body).status_code == 201
    # The reply never reached the agent; it tries again with what it has.
    retry = client.post(REGISTER, json=body)
    assert retry.status_code == 200, retry.get_json()


def test_another_registration_key_is_no_proof(client, make_bootstrap_token):
    agent_id = new_agent_id()
    first = {
        "token": make_bootstrap_token(),
        "agent_id": agent_id,
        "hostname": "h",
        "registration_key": "a" * 32,
    }
    assert client.post(REGISTER, json=first).status_code == 201
    thief = {**first, "token": make_bootstrap_token(), "registration_key": "b" * 32}
    assert_error(client.post(REGISTER, json=thief), 409, "agent_id_in_use", "registration key")
