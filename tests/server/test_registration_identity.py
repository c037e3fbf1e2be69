"""Identity that cannot be taken: once an agent claimed an id, registering under it needs
proof whatever the state of the agent's credentials (docs/security.md)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from server.db import get_database
from server.errors import NotFound
from server.models import AgentCredential, utcnow
from server.services import registration
from tests.server.conftest import assert_error, bearer, new_agent_id

REGISTER = "/api/v1/bootstrap-tokens/register"
OWNER_KEY = "owner-key-" + "o" * 22
THIEF_KEY = "thief-key-" + "t" * 22


@pytest.fixture
def owner(register):
    """An agent registered under a new id with its registration key, OWNER_KEY."""
    return register(agent_id=new_agent_id(), registration_key=OWNER_KEY)


def _refresh(client, agent_id, refresh_token):
    return client.post(f"/api/v1/agents/{agent_id}/token", json={"refresh_token": refresh_token})


def _checks(client, agent):
    return client.get(f"/api/v1/checks/target/{agent['agent_id']}",
                      headers=bearer(agent["access_token"]))


def _assert_refresh_refused(client, agent, code):
    """The agent's first refresh token gets it no new tokens: a 401 ``code``."""
    assert_error(_refresh(client, agent["agent_id"], agent["refresh_token"]), 401, code)


def _register(client, token, agent_id, key=None, **fields):
    body = {"token": token, "agent_id": agent_id, "hostname": "h", **fields}
    if key is not None:
        body["registration_key"] = key
    return client.post(REGISTER, json=body)


def _expire_credentials(app, agent_id):
    with get_database(app).session() as session:
        session.execute(update(AgentCredential).where(AgentCredential.target_id == agent_id)
                        .values(expires_at=utcnow() - timedelta(seconds=1)))


def _revoke_family_by_reuse(client, owner):
    second = _refresh(client, owner["agent_id"], owner["refresh_token"])
    assert second.status_code == 200
    third = _refresh(client, owner["agent_id"], second.get_json()["refresh_token"])
    assert third.status_code == 200
    _assert_refresh_refused(client, owner, "refresh_token_reused")


def test_takeover_after_the_refresh_token_expired_is_refused(app, client, owner,
                                                            make_bootstrap_token):
    _expire_credentials(app, owner["agent_id"])
    stolen = _register(client, make_bootstrap_token(), owner["agent_id"], THIEF_KEY,
                       hostname="evil")
    assert_error(stolen, 409, "agent_id_in_use", mentions="registration key")
    # The real agent, whose credentials lapsed, comes back with its key.
    back = _register(client, make_bootstrap_token(), owner["agent_id"], OWNER_KEY)
    assert back.status_code == 200, back.get_json()
    assert _checks(client, back.get_json()).status_code == 200


def test_takeover_after_reuse_detection_revoked_the_family_is_refused(client, owner,
                                                                       make_bootstrap_token):
    _revoke_family_by_reuse(client, owner)
    # Not even the agent's own (revoked) refresh token is proof any more.
    stolen = _register(client, make_bootstrap_token(), owner["agent_id"], THIEF_KEY,
                       refresh_token=owner["refresh_token"])
    assert_error(stolen, 409, "agent_id_in_use")
    back = _register(client, make_bootstrap_token(), owner["agent_id"], OWNER_KEY)
    assert back.status_code == 200, back.get_json()


def test_an_agent_that_never_sent_a_key_is_not_free_once_its_credentials_lapse(
    app, client, register, make_bootstrap_token
):
    owner = register(agent_id=new_agent_id())  # an older agent, without a registration key
    _expire_credentials(app, owner["agent_id"])
    assert_error(_register(client, make_bootstrap_token(), owner["agent_id"], THIEF_KEY), 409,
                 "agent_id_in_use", mentions=f"aami-server agent reset {owner['agent_id']}")


def test_a_preregistered_target_is_claimed_by_the_first_agent_and_then_guarded(
    client, admin_headers, make_bootstrap_token
):
    agent_id = new_agent_id()
    made = client.post("/api/v1/targets", json={"id": agent_id, "hostname": "db-1"},
                       headers=admin_headers)
    assert made.status_code == 201
    first = _register(client, make_bootstrap_token(), agent_id, OWNER_KEY)
    assert first.status_code == 200, first.get_json()
    assert_error(_register(client, make_bootstrap_token(), agent_id, THIEF_KEY), 409,
                 "agent_id_in_use")


def test_a_restarted_agent_with_its_key_and_lost_credentials_reconnects(
    app, client, owner, make_bootstrap_token
):
    # Credentials still live, the agent lost its credentials file: the key is enough.
    again = _register(client, make_bootstrap_token(), owner["agent_id"], OWNER_KEY)
    assert again.status_code == 200, again.get_json()
    _assert_refresh_refused(client, owner, "invalid_refresh_token")


def test_a_rebuilt_host_recovers_its_id_with_a_token_bound_to_it(app, client, owner,
                                                                make_bootstrap_token):
    _expire_credentials(app, owner["agent_id"])
    bound = make_bootstrap_token(agent_id=owner["agent_id"])
    rebuilt = _register(client, bound, owner["agent_id"], "rebuilt-key-" + "r" * 20)
    assert rebuilt.status_code == 200, rebuilt.get_json()
    # From now on the rebuilt host's key is the proof, and the old one is not.
    assert _register(client, make_bootstrap_token(), owner["agent_id"],
                     "rebuilt-key-" + "r" * 20).status_code == 200
    assert_error(_register(client, make_bootstrap_token(), owner["agent_id"], OWNER_KEY), 409,
                 "agent_id_in_use")


def test_reset_claim_frees_the_id_and_revokes_the_old_credentials(app, client, owner,
                                                                 make_bootstrap_token):
    with get_database(app).session() as session:
        registration.reset_claim(session, owner["agent_id"])
    _assert_refresh_refused(client, owner, "invalid_refresh_token")
    rebuilt = _register(client, make_bootstrap_token(), owner["agent_id"], THIEF_KEY)
    assert rebuilt.status_code == 200, rebuilt.get_json()
    # Claimed again: the next stranger is refused.
    assert_error(_register(client, make_bootstrap_token(), owner["agent_id"], OWNER_KEY), 409,
                 "agent_id_in_use")


def test_reset_claim_of_an_unknown_target_is_not_found(app):
    with get_database(app).session() as session, pytest.raises(NotFound) as raised:
        registration.reset_claim(session, new_agent_id())
    assert raised.value.code == "target_not_found"


def test_the_admin_api_resets_a_claim(client, owner, make_bootstrap_token, admin_headers,
                                      readonly_headers):
    path = f"/api/v1/targets/{owner['agent_id']}/reset"
    assert client.post(path, headers=readonly_headers).status_code == 403
    reset = client.post(path, headers=admin_headers)
    assert reset.status_code == 200, reset.get_json()
    assert reset.get_json()["registered_at"] is None
    assert _register(client, make_bootstrap_token(), owner["agent_id"], THIEF_KEY).status_code \
        == 200
    missing = client.post(f"/api/v1/targets/{new_agent_id()}/reset", headers=admin_headers)
    assert_error(missing, 404, "target_not_found")
