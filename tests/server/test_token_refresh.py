"""POST /api/v1/agents/{id}/token: rotation, reuse detection, and whose token it is."""

from __future__ import annotations

from datetime import timedelta

import jwt
from sqlalchemy import select, update

from server.db import get_database
from server.models import AgentCredential, AuditLog, utcnow
from tests.server.conftest import assert_error, bearer, new_agent_id


def _refresh(client, agent_id, refresh_token):
    return client.post(f"/api/v1/agents/{agent_id}/token", json={"refresh_token": refresh_token})


def _heartbeat(client, agent_id, access_token):
    return client.post(
        f"/api/v1/agents/{agent_id}/heartbeat",
        json={"version": "0.1.0"},
        headers=bearer(access_token),
    )


def test_refresh_rotates_the_refresh_token(client, register):
    agent = register(agent_id=new_agent_id())
    reply = _refresh(client, agent["agent_id"], agent["refresh_token"])
    assert reply.status_code == 200, reply.get_json()
    pair = reply.get_json()
    assert set(pair) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert pair["token_type"] == "Bearer"
    assert pair["expires_in"] == 900
    assert pair["refresh_token"].startswith("aami_rt_")
    assert pair["refresh_token"] != agent["refresh_token"]
    # The new one works, and is itself spent by use.
    following = _refresh(client, agent["agent_id"], pair["refresh_token"])
    assert following.status_code == 200
    assert following.get_json()["refresh_token"] not in (
        agent["refresh_token"],
        pair["refresh_token"],
    )


def test_refreshed_access_token_authenticates_the_agent(app, client, register):
    agent = register(agent_id=new_agent_id())
    pair = _refresh(client, agent["agent_id"], agent["refresh_token"]).get_json()
    assert pair["access_token"] != agent["access_token"]
    settings = app.extensions["aami.settings"]
    claims = jwt.decode(
        pair["access_token"],
        settings.SECRET_KEY,
        algorithms=["HS256"],
        audience=settings.JWT_AUDIENCE,
        issuer=settings.JWT_ISSUER,
    )
    assert claims["sub"] == agent["agent_id"]
    assert _heartbeat(client, agent["agent_id"], pair["access_token"]).status_code == 200


def test_reusing_a_spent_refresh_token_revokes_the_whole_family(client, register):
    agent = register(agent_id=new_agent_id())
    first = agent["refresh_token"]
    second = _refresh(client, agent["agent_id"], first).get_json()["refresh_token"]
    newest = _refresh(client, agent["agent_id"], second).get_json()["refresh_token"]

    reused = _refresh(client, agent["agent_id"], first)
    message = assert_error(reused, 401, "refresh_token_reused", mentions="re-register")
    assert "bootstrap token" in message
    # Two parties held the agent's secrets: the newest token is dead too.
    assert_error(
        _refresh(client, agent["agent_id"], newest), 401, "invalid_refresh_token", "revoked"
    )


def test_another_agents_refresh_token_is_refused_on_my_path(client, register):
    mine = register(agent_id=new_agent_id())
    theirs = register(agent_id=new_agent_id())
    reply = _refresh(client, mine["agent_id"], theirs["refresh_token"])
    assert_error(reply, 401, "invalid_refresh_token", mentions="this agent")
    # The failed attempt neither spent nor revoked the other agent's token.
    assert _refresh(client, theirs["agent_id"], theirs["refresh_token"]).status_code == 200
    assert _refresh(client, mine["agent_id"], mine["refresh_token"]).status_code == 200


def test_unknown_refresh_token_is_refused(client, register):
    agent = register(agent_id=new_agent_id())
    reply = _refresh(client, agent["agent_id"], "aami_rt_not-a-token-we-issued")
    assert_error(reply, 401, "invalid_refresh_token", mentions="unknown")


def test_expired_refresh_token_is_refused(app, client, register):
    agent = register(agent_id=new_agent_id())
    with get_database(app).session() as session:
        session.execute(
            update(AgentCredential)
            .where(AgentCredential.target_id == agent["agent_id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    reply = _refresh(client, agent["agent_id"], agent["refresh_token"])
    assert_error(reply, 401, "invalid_refresh_token", mentions="expired")


def test_refresh_for_a_deleted_target_is_refused(client, register, admin_headers):
    agent = register(agent_id=new_agent_id())
    deleted = client.delete(f"/api/v1/targets/{agent['agent_id']}", headers=admin_headers)
    assert deleted.status_code == 204
    reply = _refresh(client, agent["agent_id"], agent["refresh_token"])
    assert_error(reply, 401, "invalid_refresh_token")


def test_retry_after_a_lost_reply_gets_a_fresh_pair(client, register):
    agent = register(agent_id=new_agent_id())
    lost = _refresh(client, agent["agent_id"], agent["refresh_token"]).get_json()["refresh_token"]
    # The agent never saw that reply and tries again with the token it still holds.
    retry = _refresh(client, agent["agent_id"], agent["refresh_token"])
    assert retry.status_code == 200, retry.get_json()
    # The pair it never received stops working; the new one works.
    assert_error(_refresh(client, agent["agent_id"], lost), 401, "invalid_refresh_token", "revoked")
    assert _refresh(client, agent["agent_id"], retry.get_json()["refresh_token"]).status_code == 200


def test_old_spent_token_outside_the_grace_is_reuse(app, client, register):
    agent = register(agent_id=new_agent_id())
    _refresh(client, agent["agent_id"], agent["refresh_token"])
    with get_database(app).session() as session:
        session.execute(
            update(AgentCredential)
            .where(AgentCredential.spent_at.is_not(None))
            .values(spent_at=utcnow() - timedelta(minutes=5))
        )
    reused = _refresh(client, agent["agent_id"], agent["refresh_token"])
    assert_error(reused, 401, "refresh_token_reused", mentions="re-register")


def test_refresh_grace_leaves_an_audit_entry_naming_agent_and_family(app, client, register):
    agent = register(agent_id=new_agent_id())
    _refresh(client, agent["agent_id"], agent["refresh_token"])
    with get_database(app).session() as session:
        assert not session.scalars(
            select(AuditLog).where(AuditLog.action == "agent_token.refresh_grace_used")
        ).all()  # a plain refresh is no grace
        family = session.scalars(select(AgentCredential.family_id)).first()
    assert _refresh(client, agent["agent_id"], agent["refresh_token"]).status_code == 200
    with get_database(app).session() as session:
        (entry,) = session.scalars(
            select(AuditLog).where(AuditLog.action == "agent_token.refresh_grace_used")
        ).all()
    assert entry.actor == f"agent:{agent['agent_id']}"
    assert entry.subject == agent["agent_id"]
    assert entry.details["family_id"] == family
    assert 0 <= entry.details["first_used_s_ago"] <= 10
    assert agent["refresh_token"] not in str(entry.details)
