"""The fleet overview and its live feed (Flask test client)."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from server.ui import queries
from tests.ui.fleet import CURRENT, Fleet, result


def counts_in(html: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r'data-count="([\w.]+)">(\d+)<', html)}


def hosts_in(html: str) -> list[str]:
    return re.findall(r'class="host-cell">\s*<a [^>]*>([^<]+)<', html)


def test_overview_counts_targets_and_checks_by_status(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    html = client.get("/ui/").get_data(as_text=True)
    assert counts_in(html) == {
        "targets.online": 3, "targets.stale": 0, "targets.offline": 0, "targets.pending": 1,
        "maintenance": 0,
        "checks.ok": 7, "checks.warning": 1, "checks.critical": 1, "checks.unknown": 0,
    }


def test_overview_lists_every_target_with_status_group_labels_and_failing_checks(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    html = client.get("/ui/").get_data(as_text=True)
    assert hosts_in(html) == sorted(CURRENT)
    pairs = re.findall(
        r'<tr data-target-id="[^"]+" data-status="(\w+)">\s*<th[^>]*>\s*<a [^>]*>([^<]+)<', html
    )
    assert {host: status for status, host in pairs} == {
        "db-1": "online", "staging-1": "pending", "web-1": "online", "web-2": "online",
    }
    db_row = html.split(f'data-target-id="{fleet.agents["db-1"].agent_id}"')[1].split("</tr>")[0]
    assert "Databases" in db_row
    assert "env=production" in db_row and "dc=dc1" in db_row
    assert (
        '<span class="badge status-critical">Critical</span>'
        '<span class="check-chip-name">postgres</span>'
    ) in db_row
    assert "+2 OK" in db_row
    web1_row = html.split(f'data-target-id="{fleet.agents["web-1"].agent_id}"')[1].split("</tr>")[0]
    assert "All 3 OK" in web1_row
    staging_row = html.split(f'data-target-id="{fleet.agents["staging-1"].agent_id}"')[1]
    assert "No results yet" in staging_row.split("</tr>")[0]


def test_status_is_shown_as_text_as_well_as_colour(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    html = client.get("/ui/").get_data(as_text=True)
    badges = re.findall(r'<span class="badge status-(\w+)">([^<]+)</span>', html)
    assert badges
    for status, text in badges:
        assert text.lower() == status.lower(), (status, text)


def test_filter_by_group(client: FlaskClient, logged_in: str, fleet: Fleet) -> None:
    html = client.get("/ui/?group=web").get_data(as_text=True)
    assert hosts_in(html) == ["web-1", "web-2"]
    assert '<option value="web" selected>' in html  # the form shows the filter in force


def test_filter_by_label_pair_and_by_label_key(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    assert hosts_in(client.get("/ui/?label=dc%3Ddc1").get_data(as_text=True)) == ["db-1", "web-1"]
    assert hosts_in(client.get("/ui/?label=dc").get_data(as_text=True)) == [
        "db-1", "web-1", "web-2"
    ]
    assert hosts_in(client.get("/ui/?label=env%3Dstaging").get_data(as_text=True)) == ["staging-1"]


def test_filter_by_target_status_and_by_check_status(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    assert hosts_in(client.get("/ui/?status=pending").get_data(as_text=True)) == ["staging-1"]
    assert hosts_in(client.get("/ui/?status=failing").get_data(as_text=True)) == ["db-1", "web-2"]
    assert hosts_in(client.get("/ui/?status=warning").get_data(as_text=True)) == ["web-2"]
    assert hosts_in(client.get("/ui/?status=critical").get_data(as_text=True)) == ["db-1"]


def test_search_by_hostname(client: FlaskClient, logged_in: str, fleet: Fleet) -> None:
    assert hosts_in(client.get("/ui/?q=web").get_data(as_text=True)) == ["web-1", "web-2"]
    html = client.get("/ui/?q=nothing-like-this").get_data(as_text=True)
    assert hosts_in(html) == []
    assert "No targets match these filters." in html


def test_filters_combine(client: FlaskClient, logged_in: str, fleet: Fleet) -> None:
    html = client.get("/ui/?group=web&status=failing&label=dc%3Ddc2").get_data(as_text=True)
    assert hosts_in(html) == ["web-2"]


def test_unknown_status_filter_is_ignored(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    html = client.get("/ui/?status=<script>").get_data(as_text=True)
    assert len(hosts_in(html)) == 4
    assert "<script>" not in html


def test_the_page_polls_a_feed_with_the_same_filters(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    html = client.get("/ui/?group=web&status=failing").get_data(as_text=True)
    live_url = re.search(r'data-live-url="([^"]+)"', html)
    assert live_url is not None
    url = live_url.group(1).replace("&amp;", "&")
    assert url == "/ui/fleet.json?group=web&status=failing"
    feed = client.get(url).get_json()
    assert [t["hostname"] for t in feed["targets"]] == ["web-2"]


def test_live_feed_reports_counts_rows_and_a_new_state(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    feed = client.get("/ui/fleet.json").get_json()
    assert feed["counts"]["targets"] == {
        "online": 3, "stale": 0, "offline": 0, "pending": 1, "total": 4
    }
    assert feed["counts"]["checks"]["critical"] == 1
    web1 = next(t for t in feed["targets"] if t["hostname"] == "web-1")
    assert web1["status"] == "online" and web1["label"] == "Online"
    assert web1["failing"] == [] and web1["checks"] == {"total": 3, "ok": 3}
    assert web1["last_seen"].endswith("Z")

    fleet.agents["web-1"].send(result("http", "critical", "HTTP CRITICAL - timeout"))

    feed = client.get("/ui/fleet.json").get_json()
    assert feed["counts"]["checks"]["critical"] == 2
    web1 = next(t for t in feed["targets"] if t["hostname"] == "web-1")
    assert web1["failing"] == [{"check_id": "http", "status": "critical", "label": "Critical"}]
    assert web1["checks"] == {"total": 3, "ok": 2}


def test_maintenance_is_counted_and_shown(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    fleet.admin("PATCH", f"/targets/{fleet.agents['web-2'].agent_id}", {"maintenance": True})
    html = client.get("/ui/").get_data(as_text=True)
    assert counts_in(html)["maintenance"] == 1
    row = html.split(f'data-target-id="{fleet.agents["web-2"].agent_id}"')[1].split("</tr>")[0]
    assert '<span class="badge badge-maintenance" data-field="maintenance">' in row


def test_hostnames_and_labels_are_escaped(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    fleet.add_agent("<b>evil</b>", labels={"note": "<script>alert(1)</script>"})
    html = client.get("/ui/").get_data(as_text=True)
    assert "<b>evil</b>" not in html and "&lt;b&gt;evil&lt;/b&gt;" in html
    assert "<script>alert(1)</script>" not in html


def test_a_fleet_larger_than_one_page_says_so(
    client: FlaskClient, logged_in: str, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queries, "MAX_TARGETS", 2)
    html = client.get("/ui/").get_data(as_text=True)
    assert hosts_in(html) == ["db-1", "staging-1"]
    assert "The fleet has more than 2 targets" in html
    monkeypatch.setattr(queries, "MAX_TARGETS", 4)
    assert "The fleet has more than" not in client.get("/ui/").get_data(as_text=True)
