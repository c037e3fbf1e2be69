"""The checks page (Flask test client)."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

from tests.ui.fleet import Fleet


def test_checks_page_lists_checks_with_schedule_assignment_and_states(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    html = client.get("/ui/checks/").get_data(as_text=True)
    listed = re.findall(r'<tr data-check-id="([\w-]+)">', html)
    assert listed == ["disk", "http", "load", "postgres"]
    disk = html.split('data-check-id="disk"')[1].split("</tr>")[0]
    assert "Root disk" in disk
    assert "/usr/lib/nagios/plugins/check_disk" in disk
    assert '<td class="nowrap">1m</td>' in disk and '<td class="nowrap">10s</td>' in disk
    assert '<span class="chip">os=linux</span>' in disk
    states = disk.split('class="states-cell"')[1]
    assert states.count('class="count-badge"') == 2
    assert '<span class="badge status-warning">Warning</span> 1' in states
    assert '<span class="badge status-ok">OK</span> 2' in states
    http = html.split('data-check-id="http"')[1].split("</tr>")[0]
    assert '<span class="chip">group web</span>' in http


def test_a_check_with_no_results_says_so(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    fleet.admin(
        "POST",
        "/checks",
        {"id": "ntp", "command": ["/usr/lib/nagios/plugins/check_ntp"], "interval": "5m",
         "timeout": "10s", "enabled": False},
    )
    html = client.get("/ui/checks/").get_data(as_text=True)
    ntp = html.split('data-check-id="ntp"')[1].split("</tr>")[0]
    assert "No results yet" in ntp
    assert "Disabled" in ntp
    assert '<td class="nowrap">5m</td>' in ntp
    assert "nothing" in ntp  # assigned to nothing
