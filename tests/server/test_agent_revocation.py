"""Revoking an agent cuts off the access JWT it holds at once, not when it expires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from server.db import get_database
from server.models import AgentCredential, utcnow
from server.security import revocation
from tests.server.conftest import assert_error, bearer, new_agent_id
from tests.server.results_helpers import make_result


def _calls(client, agent):
    """The agent's calls with its access token: heartbeat, results, its checks."""
    agent_id, headers = agent["agent_id"], bearer(agent["access_token"])
    now = datetime.now(UTC).isoformat()
    return {
        "heartbeat": lambda: client.post(
            f"/api/v1/agents/{agent_id}/heartbeat", json={"version": "t"}, headers=headers
        ),
        "results": lambda: client.post(
            f"/api/v1/agents/{agent_id}/check-results",
            json={"results": [make_result("disk", executed_at=now)]},
            headers=headers,
        ),
        "checks": lambda: client.get(f"/api/v1/checks/target/{agent_id}", headers=headers),
    }


@pytest.mark.parametrize("call", ["heartbeat", "results", "checks"])
def test_old_token_is_refused_once_a_deleted_id_is_registered_again(
    client, register, admin_headers, call
):
    agent = register(agent_id=new_agent_id(), registration_key="a" * 32)
    assert _calls(client, agent)[call]().status_code < 400
    deleted = client.delete(f"/api/v1/targets/{agent['agent_id']}", headers=admin_headers)
    assert deleted.status_code == 204
    # Deleted: the agent is told the server no longer knows it (and re-registers).
    assert_error(_calls(client, agent)[call](), 404, "target_not_found")
    newcomer = register(agent_id=agent["agent_id"], registration_key="b" * 32)
    assert_error(_calls(client, agent)[call](), 401, "token_revoked", mentions="revoked")
    assert _calls(client, newcomer)[call]().status_code < 400


@pytest.mark.parametrize("call", ["heartbeat", "results", "checks"])
def test_family_revoked_by_reuse_cuts_off_the_access_token(app, client, register, call):
    agent = register(agent_id=new_agent_id())
    refresh = f"/api/v1/agents/{agent['agent_id']}/token"
    assert client.post(refresh, json={"refresh_token": agent["refresh_token"]}).status_code == 200
    with get_database(app).session() as session:  # past the grace for a lost reply
        session.execute(
            update(AgentCredential)
            .where(AgentCredential.spent_at.is_not(None))
            .values(spent_at=utcnow() - timedelta(minutes=5))
        )
    reused = client.post(refresh, json={"refresh_token": agent["refresh_token"]})
    assert_error(reused, 401, "refresh_token_reused")
    assert_error(_calls(client, agent)[call](), 401, "token_revoked")


def test_token_issued_after_a_revocation_works(client, register):
    key = "k" * 32
    agent = register(agent_id=new_agent_id(), registration_key=key)
    again = register(agent_id=agent["agent_id"], registration_key=key)
    # Re-registration revoked the first pair (its JWT included) and issued a working one.
    assert_error(_calls(client, agent)["heartbeat"](), 401, "token_revoked")
    assert _calls(client, again)["heartbeat"]().status_code == 200


def test_an_agent_call_reads_its_generation_once(app, client, register, monkeypatch):
    agent = register(agent_id=new_agent_id())
    reads = []
    original = revocation.generation
    monkeypatch.setattr(
        revocation, "generation", lambda c, a: reads.append(a) or original(c, a)
    )
    assert _calls(client, agent)["checks"]().status_code == 200
    assert reads == [agent["agent_id"]]
