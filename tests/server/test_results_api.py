"""POST /api/v1/agents/{id}/check-results and the ingest job behind it (run inline)."""

from __future__ import annotations

from sqlalchemy import func, select

from server.db import get_database
from server.models import CheckResult, CheckState, Event
from tests.server.results_helpers import make_result, post_results


def count(app, model, *where):
    with get_database(app).session() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def events(app, kind):
    with get_database(app).session() as session:
        rows = session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)).all()
        return [(e.previous, e.current) for e in rows]


def test_accepted_batch_is_stored_with_state_and_perfdata(app, client, agent):
    reply = post_results(client, agent, [make_result("load", "warning")])
    assert reply.status_code == 202
    body = reply.get_json()
    assert body["accepted"] == 1 and body["rejected"] == [] and body["job_id"]
    with get_database(app).session() as session:
        stored = session.scalars(select(CheckState)).one()
        assert (stored.status, stored.exit_code) == ("warning", 1)
        assert stored.perfdata[0]["label"] == "load1"


def test_retried_batch_adds_no_rows(app, client, agent):
    batch = [make_result("load", seconds=i) for i in range(50)]
    assert post_results(client, agent, batch).status_code == 202
    assert post_results(client, agent, batch).status_code == 202
    assert count(app, CheckResult) == 50


def test_results_for_unassigned_checks_are_rejected_by_name(app, client, agent):
    reply = post_results(client, agent, [make_result("load"), make_result("not-mine")])
    body = reply.get_json()
    assert body["accepted"] == 1
    assert [r["reason"] for r in body["rejected"]] == [
        "check 'not-mine' is not assigned to this agent"
    ]
    assert count(app, CheckResult) == 1


def test_state_change_raises_one_event_and_repeats_count_occurrences(app, client, agent):
    statuses = ["ok", "ok", "critical", "critical", "critical", "ok"]
    post_results(client, agent, [make_result("load", s, seconds=i) for i, s in enumerate(statuses)])
    assert events(app, "check_state") == [(None, "ok"), ("ok", "critical"), ("critical", "ok")]
    with get_database(app).session() as session:
        assert session.scalars(select(CheckState)).one().occurrences == 1


def test_late_result_goes_to_history_without_changing_state(app, client, agent):
    post_results(client, agent, [make_result("load", "ok", seconds=100)])
    post_results(client, agent, [make_result("load", "critical", seconds=50)])
    with get_database(app).session() as session:
        assert session.scalars(select(CheckState)).one().status == "ok"
    assert count(app, CheckResult) == 2


def test_alternating_check_is_flapping_with_one_event(app, client, agent):
    flips = [make_result("load", "ok" if i % 2 else "critical", seconds=i) for i in range(40)]
    for start in range(0, 40, 10):
        post_results(client, agent, flips[start : start + 10])
    assert events(app, "flapping") == [("stable", "flapping")]
    # Once flapping, flips stop producing state events: far fewer than the 40 flips.
    assert len(events(app, "check_state")) < 25
    with get_database(app).session() as session:
        assert session.scalars(select(CheckState)).one().flapping is True


def test_target_in_maintenance_records_results_but_no_events(app, client, agent, admin_headers):
    client.patch(
        f"/api/v1/targets/{agent['agent_id']}", json={"maintenance": True}, headers=admin_headers
    )
    post_results(
        client, agent, [make_result("load", s, seconds=i) for i, s in enumerate(["ok", "critical"])]
    )
    assert count(app, CheckResult) == 2
    assert events(app, "check_state") == []


def test_batch_larger_than_limit_is_refused_whole(app, client, agent):
    batch = [make_result("load", seconds=i) for i in range(501)]
    reply = post_results(client, agent, batch)
    assert reply.status_code == 422
    assert "at most 500" in reply.get_json()["error"]["message"]
    assert count(app, CheckResult) == 0


def test_job_status_is_reported(client, agent, admin_headers):
    job_id = post_results(client, agent, [make_result("load")]).get_json()["job_id"]
    reply = client.get(f"/api/v1/jobs/{job_id}", headers=admin_headers)
    assert reply.status_code == 200
    assert reply.get_json()["status"] == "finished"
    assert reply.get_json()["result"] == {"received": 1, "inserted": 1}
    assert client.get("/api/v1/jobs/nope", headers=admin_headers).status_code == 404
