"""Signed check policies: what the agent receives verifies with the server's public key."""

from __future__ import annotations

import base64

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from server.security.policy import canonical_bytes, key_id, public_key_text
from tests.server.conftest import bearer
from tests.server.results_helpers import create_check


def fetch(client, agent):
    reply = client.get(
        f"/api/v1/checks/target/{agent['agent_id']}", headers=bearer(agent["access_token"])
    )
    assert reply.status_code == 200
    return reply.get_json()


def verify(app, policy):
    public_text = public_key_text(app.extensions["aami.policy_key"])
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_text))
    assert policy["signature"]["key_id"] == key_id(public_text)
    public.verify(base64.b64decode(policy["signature"]["value"]), canonical_bytes(policy))


def test_reply_as_received_verifies(app, client, register, admin_headers):
    agent = register()
    create_check(client, admin_headers, "load", agent["agent_id"])
    policy = fetch(client, agent)
    assert policy["checks"][0]["interval"] == "10s"  # signed in the form that was sent
    verify(app, policy)


def test_tampered_reply_does_not_verify(app, client, register, admin_headers):
    agent = register()
    create_check(client, admin_headers, "load", agent["agent_id"])
    policy = fetch(client, agent)
    policy["checks"][0]["command"].append("--evil")
    with pytest.raises(InvalidSignature):
        verify(app, policy)


def test_serial_grows_with_policy_changes_only(client, register, admin_headers):
    agent = register()
    first = fetch(client, agent)["serial"]
    client.post(
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        json={"version": "t"},
        headers=bearer(agent["access_token"]),
    )
    assert fetch(client, agent)["serial"] == first  # a heartbeat changes no policy
    create_check(client, admin_headers, "load", agent["agent_id"])
    after_check = fetch(client, agent)["serial"]
    assert after_check > first
    client.patch(
        f"/api/v1/targets/{agent['agent_id']}",
        json={"labels": {"role": "db"}},
        headers=admin_headers,
    )
    assert fetch(client, agent)["serial"] > after_check


def test_registration_announces_the_key_that_verifies_the_policies(
    app, client, register, admin_headers
):
    from agent.policy import PolicyVerifier
    from agent.transport.base import Assignment, PolicySignature

    agent = register()
    assert agent["policy_keys"] == [public_key_text(app.extensions["aami.policy_key"])]
    create_check(client, admin_headers, "load", agent["agent_id"])
    policy = fetch(client, agent)
    # What an agent that pinned the announced key does with the reply.
    PolicyVerifier(agent["policy_keys"]).verify(
        Assignment(
            etag=None,
            config_version=policy["config_version"],
            checks=policy["checks"],
            target_id=policy["target_id"],
            serial=policy["serial"],
            issued_at=policy["issued_at"],
            signature=PolicySignature(**policy["signature"]),
        ),
        target_id=agent["agent_id"],
        last_serial=None,
    )


def test_a_server_that_signs_nothing_announces_no_key(app, register):
    app.extensions["aami.policy_key"] = None
    assert register()["policy_keys"] == []
