"""GET /api/v1/events with filters."""

from __future__ import annotations

from tests.server.results_helpers import create_check, make_result, post_results


def test_events_filter_by_target_check_and_kind(client, register, admin_headers):
    first, second = register(), register()
    for agent in (first, second):
        create_check(client, admin_headers, f"c-{agent['agent_id'][:8]}", agent["agent_id"])
        post_results(
            client,
            agent,
            [
                make_result(f"c-{agent['agent_id'][:8]}", s, seconds=i)
                for i, s in enumerate(["ok", "critical"])
            ],
        )
    mine = client.get(
        f"/api/v1/events?target_id={first['agent_id']}", headers=admin_headers
    ).get_json()
    assert {e["target_id"] for e in mine} == {first["agent_id"]}
    assert [e["current"] for e in mine] == ["critical", "ok"]  # newest first
    check_events = client.get(
        f"/api/v1/events?kind=check_state&check_id=c-{second['agent_id'][:8]}&limit=1",
        headers=admin_headers,
    ).get_json()
    assert len(check_events) == 1 and check_events[0]["target_id"] == second["agent_id"]


def test_events_reject_unknown_filters(client, admin_headers):
    reply = client.get("/api/v1/events?colour=red", headers=admin_headers)
    assert reply.status_code == 422
    assert "colour" in reply.get_json()["error"]["message"]
