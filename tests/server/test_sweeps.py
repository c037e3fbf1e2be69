"""Stale-agent and stale-check sweeps, and retention pruning."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from server.db import get_database
from server.jobs import sweeps
from server.jobs.retention import prune
from server.models import CheckResult, CheckState, Event, Target, utcnow
from server.services import liveness
from tests.server.conftest import bearer
from tests.server.results_helpers import create_check, make_result, post_results


@pytest.fixture
def online_agent(client, register):
    agent = register()
    reply = client.post(
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        json={"version": "test"},
        headers=bearer(agent["access_token"]),
    )
    assert reply.status_code == 200
    return agent


def silence(app, agent_id, seconds):
    """Pretend the agent's last heartbeat was ``seconds`` ago."""
    app.extensions["aami.redis"].zadd(liveness.LAST_SEEN_KEY, {agent_id: time.time() - seconds})


def status_events(app, agent_id):
    with get_database(app).session() as session:
        rows = session.scalars(
            select(Event)
            .where(Event.target_id == agent_id, Event.kind == "target_status")
            .order_by(Event.id)
        ).all()
        return [(e.previous, e.current) for e in rows]


def test_silent_agent_goes_stale_then_offline_with_one_event_each(app, online_agent):
    agent_id = online_agent["agent_id"]
    interval = app.extensions["aami.settings"].HEARTBEAT_INTERVAL
    silence(app, agent_id, interval * 4)
    assert sweeps.sweep_stale_agents() == {"stale": 1, "offline": 0}
    assert sweeps.sweep_stale_agents() == {"stale": 0, "offline": 0}
    silence(app, agent_id, interval * 11)
    sweeps.sweep_stale_agents()
    sweeps.sweep_stale_agents()
    assert status_events(app, agent_id) == [
        ("pending", "online"),
        ("online", "stale"),
        ("stale", "offline"),
    ]


def test_returning_agent_is_marked_online_once(app, client, online_agent):
    agent_id = online_agent["agent_id"]
    silence(app, agent_id, app.extensions["aami.settings"].HEARTBEAT_INTERVAL * 11)
    sweeps.sweep_stale_agents()
    for _ in range(3):
        client.post(
            f"/api/v1/agents/{agent_id}/heartbeat",
            json={"version": "test"},
            headers=bearer(online_agent["access_token"]),
        )
    assert status_events(app, agent_id)[-2:] == [("online", "offline"), ("offline", "online")]
    with get_database(app).session() as session:
        assert session.get(Target, agent_id).status == "online"


def test_agent_heard_recently_stays_online(app, online_agent):
    assert sweeps.sweep_stale_agents() == {"stale": 0, "offline": 0}
    assert status_events(app, online_agent["agent_id"]) == [("pending", "online")]


def test_silent_check_becomes_unknown_once(app, client, admin_headers, online_agent):
    create_check(client, admin_headers, "load", online_agent["agent_id"])
    post_results(client, online_agent, [make_result("load", "ok")])  # executed long ago
    assert sweeps.sweep_stale_checks() == 1
    assert sweeps.sweep_stale_checks() == 0
    with get_database(app).session() as session:
        state = session.scalars(select(CheckState)).one()
        assert state.status == "unknown"
        assert "no result for" in state.output
        kinds = session.scalars(select(Event.current).where(Event.kind == "check_state")).all()
    assert kinds == ["ok", "unknown"]


def test_fresh_check_is_left_alone(app, client, admin_headers, online_agent):
    create_check(client, admin_headers, "load", online_agent["agent_id"])
    result = make_result("load", "ok", executed_at=utcnow().isoformat())
    post_results(client, online_agent, [result])
    assert sweeps.sweep_stale_checks() == 0


def test_pruning_removes_only_old_results_and_events(app, client, admin_headers, online_agent):
    create_check(client, admin_headers, "load", online_agent["agent_id"])
    old = make_result("load", executed_at=(utcnow() - timedelta(hours=1)).isoformat())
    new = make_result("load", executed_at=utcnow().isoformat())
    post_results(client, online_agent, [old, new])
    # Aged in place: the API refuses results older than the retention period.
    with get_database(app).session() as session:
        session.execute(
            update(CheckResult)
            .where(CheckResult.result_id == old["result_id"])
            .values(executed_at=utcnow() - timedelta(days=40))
        )
        session.execute(update(Event).values(created_at=utcnow() - timedelta(days=40)))
    removed = prune(30)
    assert removed["results"] == 1
    assert removed["events"] >= 1
    with get_database(app).session() as session:
        assert session.scalar(select(func.count()).select_from(CheckResult)) == 1
        assert session.scalar(select(func.count()).select_from(Event)) == 0
