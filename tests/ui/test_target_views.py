"""One target's page, its live feed, and the operator actions on it (Flask test client)."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient

from server.extensions import REDIS
from server.services import commands
from tests.ui.fleet import Fleet, result


def page(client: FlaskClient, fleet: Fleet, hostname: str, query: str = "") -> str:
    reply = client.get(f"/ui/targets/{fleet.agents[hostname].agent_id}{query}")
    assert reply.status_code == 200
    return reply.get_data(as_text=True)


def check_row(html: str, check_id: str) -> str:
    return html.split(f'data-check-id="{check_id}"')[1].split("</tr>")[0]


def test_target_page_shows_each_check_with_output_and_perfdata(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    html = page(client, fleet, "web-2")
    assert re.findall(r'<tr id="check-([\w-]+)" data-check-id', html) == ["disk", "http", "load"]
    disk = check_row(html, "disk")
    assert '<span class="badge status-warning">Warning</span>' in disk
    assert "DISK WARNING - / is 86.8% full" in disk
    assert "<li>used=86.8% (warn 85, crit 95, min 0, max 100)</li>" in disk
    load = check_row(html, "load")
    assert "<li>load1=" in load and "<li>load5=" in load
    assert '<time datetime="' in load  # last run, updated live by the script


def test_target_page_plots_status_over_time_and_a_perf_value(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    html = page(client, fleet, "web-2")
    strips = re.findall(r'aria-label="Status history of ([\w-]+); now (\w+)"', html)
    assert strips == [("disk", "Warning"), ("http", "OK"), ("load", "OK")]
    assert 'class="seg seg-warning"' in html and 'class="seg seg-ok"' in html
    # The worst check with numbers is plotted first: disk's "used", with its thresholds.
    assert '<option value="disk:used" selected>' in html
    assert re.search(r'<polyline class="chart-line" points="[\d., ]+"', html)
    assert 'class="threshold threshold-warn"' in html
    assert "Warning at 85%" in html and "Critical at 95%" in html


def test_the_plotted_value_is_chosen_in_the_query_string(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    html = page(client, fleet, "web-2", "?plot=load:load5")
    assert '<option value="load:load5" selected>' in html
    assert "<strong>load5</strong>" in html
    html = page(client, fleet, "web-2", "?plot=nope:nothing")  # falls back, no error
    assert '<option value="disk:used" selected>' in html


def test_target_page_lists_recent_events(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    html = page(client, fleet, "db-1")
    events = html.split("data-events")[1].split("</tbody>")[0]
    assert "POSTGRES CRITICAL - replication lag" in events
    assert "db-1 is online (was pending)" in events


def test_a_target_without_results_says_so(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    html = page(client, fleet, "staging-1")
    assert '<span class="badge status-pending">Pending</span>' in html
    assert "No result yet" in check_row(html, "disk")
    assert "No results yet." in html  # the timeline
    assert "No check on this target reports performance data yet." in html


def test_unknown_target_is_an_html_404(client: FlaskClient, logged_in: str) -> None:
    reply = client.get("/ui/targets/does-not-exist")
    assert reply.status_code == 404
    assert reply.mimetype == "text/html"
    assert b"no target with id does-not-exist" in reply.data


def test_live_feed_of_a_target_follows_a_new_result(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    url = f"/ui/targets/{fleet.agents['web-1'].agent_id}/state.json"
    feed = client.get(url).get_json()
    http = next(c for c in feed["checks"] if c["check_id"] == "http")
    assert http["status"] == "ok"
    newest_event = feed["events"][0]["id"]

    fleet.agents["web-1"].send(
        result("http", "critical", "HTTP CRITICAL - 503", [{"label": "time", "value": 2.5}])
    )

    feed = client.get(url).get_json()
    assert feed["target"]["status"] == "online"
    http = next(c for c in feed["checks"] if c["check_id"] == "http")
    assert (http["status"], http["label"], http["output"]) == (
        "critical", "Critical", "HTTP CRITICAL - 503"
    )
    assert http["perfdata"] == ["time=2.5"]
    assert [c["check_id"] for c in feed["checks"]][0] == "http"  # worst first
    event = feed["events"][0]
    assert event["id"] > newest_event
    assert (event["check_id"], event["previous"], event["current"]) == ("http", "ok", "critical")
    assert event["current_label"] == "Critical"


def test_run_now_queues_the_command_the_agent_receives(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    agent = fleet.agents["web-1"]
    reply = client.post(
        f"/ui/targets/{agent.agent_id}/checks/http/run", data={"csrf_token": logged_in}
    )
    assert reply.status_code == 302
    assert reply.headers["Location"].endswith(f"/ui/targets/{agent.agent_id}#check-http")
    assert "Asked web-1 to run http now." in client.get(reply.headers["Location"]).get_data(
        as_text=True
    )
    commands_sent = agent.heartbeat()["commands"]
    assert [(c["type"], c["check_id"]) for c in commands_sent] == [("run_check", "http")]
    [entry] = fleet.admin("GET", "/audit?action=check.force_run")
    assert entry["actor"].startswith("admin:admin-user (")
    assert entry["subject"] == agent.agent_id
    assert entry["details"] == {"check_id": "http", "via": "ui"}


def test_run_now_refuses_a_check_not_assigned(
    app: Flask, client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    agent = fleet.agents["web-1"]
    reply = client.post(
        f"/ui/targets/{agent.agent_id}/checks/postgres/run", data={"csrf_token": logged_in}
    )
    assert reply.status_code == 409
    assert b"not assigned" in reply.data
    assert not commands.has_commands(app.extensions[REDIS], agent.agent_id)


def test_maintenance_can_be_started_and_ended(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    target_id = fleet.agents["web-1"].agent_id
    url = f"/ui/targets/{target_id}/maintenance"
    reply = client.post(url, data={"csrf_token": logged_in, "maintenance": "on"})
    assert reply.status_code == 302
    assert fleet.admin("GET", f"/targets/{target_id}")["maintenance"] is True
    html = page(client, fleet, "web-1")
    assert "web-1 is now in maintenance." in html
    assert "End maintenance" in html
    client.post(url, data={"csrf_token": logged_in, "maintenance": "off"})
    assert fleet.admin("GET", f"/targets/{target_id}")["maintenance"] is False
    entries = fleet.admin("GET", f"/audit?action=target.update&subject={target_id}")
    assert [e["details"]["changes"]["maintenance"] for e in entries] == [
        {"from": True, "to": False}, {"from": False, "to": True}  # newest first
    ]
    reply = client.post(url, data={"csrf_token": logged_in, "maintenance": "maybe"})
    assert reply.status_code == 400


def test_actions_need_the_csrf_token(
    app: Flask, client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    agent = fleet.agents["web-1"]
    reply = client.post(f"/ui/targets/{agent.agent_id}/maintenance", data={"maintenance": "on"})
    assert reply.status_code == 403
    reply = client.post(f"/ui/targets/{agent.agent_id}/checks/http/run")
    assert reply.status_code == 403
    assert fleet.admin("GET", f"/targets/{agent.agent_id}")["maintenance"] is False
    assert not commands.has_commands(app.extensions[REDIS], agent.agent_id)


def test_read_only_users_see_no_write_buttons_and_their_posts_are_refused(
    app: Flask, client: FlaskClient, login: Callable[..., str], fleet: Fleet
) -> None:
    csrf = login("read-only")
    agent = fleet.agents["web-1"]
    html = page(client, fleet, "web-1")
    assert "read-only" in html
    assert 'data-action="run-check"' not in html
    assert 'data-action="maintenance"' not in html

    # A forged POST with a valid CSRF token: the role, not the token, refuses it.
    reply = client.post(
        f"/ui/targets/{agent.agent_id}/maintenance", data={"csrf_token": csrf, "maintenance": "on"}
    )
    assert reply.status_code == 403
    assert b"read-only" in reply.data
    reply = client.post(f"/ui/targets/{agent.agent_id}/checks/http/run", data={"csrf_token": csrf})
    assert reply.status_code == 403
    assert fleet.admin("GET", f"/targets/{agent.agent_id}")["maintenance"] is False
    assert not commands.has_commands(app.extensions[REDIS], agent.agent_id)


def test_admins_see_the_write_buttons(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    html = page(client, fleet, "web-1")
    assert html.count('data-action="run-check"') == 3
    assert 'data-action="maintenance"' in html
