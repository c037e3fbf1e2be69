"""A bootstrap token scopes what it grants: its group is authoritative, and checks that
carry secrets (``env``) reach a target only through trusted selectors (docs/security.md)."""

from __future__ import annotations

import pytest

from tests.server.conftest import assert_error, bearer, new_agent_id

REGISTER = "/api/v1/bootstrap-tokens/register"
DUMMY = ["/usr/lib/nagios/plugins/check_dummy", "0"]


@pytest.fixture
def make_check(client, admin_headers):
    def make(check_id, assign, env=None):
        body = {"id": check_id, "command": DUMMY, "interval": "60s", "timeout": "10s",
                "assign": assign, "env": env or {}}
        reply = client.post("/api/v1/checks", json=body, headers=admin_headers)
        assert reply.status_code == 201, reply.get_json()

    return make


def _assigned(client, agent):
    reply = client.get(f"/api/v1/checks/target/{agent['agent_id']}",
                       headers=bearer(agent["access_token"]))
    assert reply.status_code == 200, reply.get_json()
    return {c["id"]: c for c in reply.get_json()["checks"]}


def _target(client, admin_headers, agent_id):
    return client.get(f"/api/v1/targets/{agent_id}", headers=admin_headers).get_json()


# --- the token's group ------------------------------------------------------------------------


def test_a_lab_token_cannot_register_into_prod(app, client, make_group, make_bootstrap_token):
    make_group("lab")
    make_group("prod")
    reply = client.post(REGISTER, json={"token": make_bootstrap_token(group_id="lab"),
                                        "hostname": "h", "group_id": "prod"})
    assert_error(reply, 403, "group_out_of_scope", mentions="'lab'")


def test_a_refused_out_of_scope_registration_costs_no_use(app, client, make_group,
                                                          make_bootstrap_token):
    make_group("lab")
    make_group("prod")
    token = make_bootstrap_token(group_id="lab", max_uses=1)
    refused = client.post(REGISTER, json={"token": token, "hostname": "h", "group_id": "prod"})
    assert refused.status_code == 403
    assert client.post(REGISTER, json={"token": token, "hostname": "h"}).status_code == 201


@pytest.mark.parametrize("asked", ["lab", None, ""])
def test_asking_for_the_tokens_own_group_or_none_is_fine(client, make_group,
                                                         make_bootstrap_token, admin_headers,
                                                         asked):
    make_group("lab")
    reply = client.post(REGISTER, json={"token": make_bootstrap_token(group_id="lab"),
                                        "hostname": "h", "group_id": asked})
    assert reply.status_code == 201, reply.get_json()
    target = _target(client, admin_headers, reply.get_json()["agent_id"])
    assert (target["group_id"], target["group_from_agent"]) == ("lab", False)


def test_an_agent_cannot_move_itself_out_of_the_tokens_group_later(
    client, make_group, make_bootstrap_token, register, admin_headers
):
    make_group("lab")
    make_group("prod")
    agent = register(agent_id=new_agent_id(), token=make_bootstrap_token(group_id="lab"),
                     registration_key="k" * 32)
    moved = client.post(REGISTER, json={"token": make_bootstrap_token(), "hostname": "h",
                                        "agent_id": agent["agent_id"],
                                        "registration_key": "k" * 32, "group_id": "prod"})
    assert moved.status_code == 200, moved.get_json()
    target = _target(client, admin_headers, agent["agent_id"])
    assert (target["group_id"], target["group_from_agent"]) == ("lab", False)


# --- secrets reach only trusted selectors -----------------------------------------------------


def test_a_label_the_agent_declares_does_not_bring_a_check_with_secrets(
    client, register, make_check
):
    make_check("db-password", {"labels": {"role": "db"}}, env={"PGPASSWORD": "s3cret"})
    make_check("db-ping", {"labels": {"role": "db"}})
    agent = register(agent_id=new_agent_id(), labels={"role": "db"})
    assigned = _assigned(client, agent)
    assert "db-password" not in assigned
    # Checks without secrets still follow the agent's own labels.
    assert "db-ping" in assigned


def test_a_group_the_agent_picked_does_not_bring_a_check_with_secrets(
    client, register, make_group, make_check, admin_headers
):
    make_group("prod")
    make_check("prod-secret", {"group_ids": ["prod"]}, env={"TOKEN": "s3cret"})
    make_check("prod-plain", {"group_ids": ["prod"]})
    agent = register(agent_id=new_agent_id(), group_id="prod")
    assert _target(client, admin_headers, agent["agent_id"])["group_from_agent"] is True
    assert set(_assigned(client, agent)) == {"prod-plain"}


@pytest.mark.parametrize("trusted_by", ["token", "operator"])
def test_labels_an_operator_or_token_set_bring_checks_with_secrets(
    client, register, make_bootstrap_token, make_check, admin_headers, trusted_by
):
    make_check("db-password", {"labels": {"role": "db"}}, env={"PGPASSWORD": "s3cret"})
    if trusted_by == "token":
        agent = register(agent_id=new_agent_id(),
                         token=make_bootstrap_token(labels={"role": "db"}))
    else:
        agent = register(agent_id=new_agent_id())
        patched = client.patch(f"/api/v1/targets/{agent['agent_id']}",
                               json={"labels": {"role": "db"}}, headers=admin_headers)
        assert patched.status_code == 200
    assert _assigned(client, agent)["db-password"]["env"] == {"PGPASSWORD": "s3cret"}


def test_groups_an_operator_or_token_set_and_target_ids_bring_checks_with_secrets(
    client, register, make_group, make_bootstrap_token, make_check, admin_headers
):
    make_group("prod")
    make_check("by-group", {"group_ids": ["prod"]}, env={"A": "1"})
    by_token = register(agent_id=new_agent_id(), token=make_bootstrap_token(group_id="prod"))
    assert "by-group" in _assigned(client, by_token)
    picked = register(agent_id=new_agent_id(), group_id="prod")
    assert "by-group" not in _assigned(client, picked)
    # An operator confirming the group makes it trusted.
    patched = client.patch(f"/api/v1/targets/{picked['agent_id']}", json={"group_id": "prod"},
                           headers=admin_headers)
    assert patched.status_code == 200 and patched.get_json()["group_from_agent"] is False
    assert "by-group" in _assigned(client, picked)
    make_check("by-id", {"target_ids": [picked["agent_id"]]}, env={"B": "2"})
    assert "by-id" in _assigned(client, picked)


def test_trusted_labels_win_over_the_agents_own_and_both_are_shown(
    client, register, make_bootstrap_token, admin_headers
):
    agent = register(agent_id=new_agent_id(), token=make_bootstrap_token(labels={"env": "prod"}),
                     labels={"env": "dev", "dc": "dc1"})
    target = _target(client, admin_headers, agent["agent_id"])
    assert target["labels"] == {"env": "prod", "dc": "dc1"}
    assert target["trusted_labels"] == {"env": "prod"}
    assert target["agent_labels"] == {"env": "dev", "dc": "dc1"}


def test_an_agent_claiming_a_trusted_label_value_it_lacks_gets_no_secret(
    client, register, make_bootstrap_token, make_check
):
    make_check("prod-db", {"labels": {"env": "prod"}}, env={"PGPASSWORD": "s3cret"})
    agent = register(agent_id=new_agent_id(), token=make_bootstrap_token(labels={"env": "dev"}),
                     labels={"env": "prod"})
    assert "prod-db" not in _assigned(client, agent)


def test_a_check_with_secrets_cannot_be_forced_through_an_agent_label(
    client, register, make_check, admin_headers
):
    make_check("db-password", {"labels": {"role": "db"}}, env={"PGPASSWORD": "s3cret"})
    make_check("db-ping", {"labels": {"role": "db"}})
    agent = register(agent_id=new_agent_id(), labels={"role": "db"})
    base = f"/api/v1/targets/{agent['agent_id']}/checks"
    assert client.post(f"{base}/db-ping/run", headers=admin_headers).status_code == 202
    assert_error(client.post(f"{base}/db-password/run", headers=admin_headers), 409, "conflict",
                 mentions="not assigned")
