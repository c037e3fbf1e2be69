"""The status UI in a real browser: headless Chromium against ``aami-server serve``.

Agents are played over HTTP by ``tests/ui/fleet.py`` (register, heartbeat, post results
with their JWTs), except for the forced check, which must reach a real ``aami-agent``.
"""

from __future__ import annotations

import collections
import os
import shutil
import struct
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.scheduler import splay_offset
from tests.integration.processes import LiveAgent, write_agent_config
from tests.ui.fleet import Fleet, result
from tests.ui.live import DESKTOP, PHONE, Browser, EmbeddedServer, emulate, full_page_png, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
# Screenshots go to tests/artifacts (ignored by git) on every run; with
# AAMI_UPDATE_SCREENSHOTS=1 they refresh the ones the README shows, in docs/screenshots.
SCREENSHOTS = REPO / (
    "docs/screenshots" if os.environ.get("AAMI_UPDATE_SCREENSHOTS") == "1" else "tests/artifacts"
)
# The page polls every 2 s; a change must show well within this.
LIVE_TIMEOUT = 8.0


def expected_counts(fleet: Fleet) -> dict[str, int]:
    """What the overview's tiles should say, asked of the JSON API."""
    targets = fleet.admin("GET", "/targets")
    counts = collections.Counter(f"targets.{t['status']}" for t in targets)
    counts["maintenance"] = sum(1 for t in targets if t["maintenance"])
    for target in targets:
        for state in fleet.admin("GET", f"/targets/{target['id']}/checks"):
            counts[f"checks.{state['status']}"] += 1
    return counts


def tile_counts(browser: Browser) -> dict[str, int]:
    return {
        node.get_attribute("data-count"): int(node.text)
        for node in browser.find_all("[data-count]")
    }


def row(browser: Browser, target_id: str) -> Any:
    return browser.find(f'tr[data-target-id="{target_id}"]')


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_login_is_required_and_the_overview_shows_counts_and_rows(
    browser: Browser, live_fleet: Fleet
) -> None:
    browser.log_out()
    browser.open("/ui/")
    assert browser.path == "/ui/login?next=/ui/"
    browser.log_in("admin")
    browser.open("/ui/")

    counts = tile_counts(browser)
    expected = expected_counts(live_fleet)
    assert {k: v for k, v in counts.items() if v} == {k: v for k, v in expected.items() if v}
    assert counts["targets.online"] >= 3 and counts["checks.critical"] >= 1

    targets = {t["hostname"]: t for t in live_fleet.admin("GET", "/targets")}
    hosts = browser.texts("tr[data-target-id] .host-cell a")
    assert hosts == sorted(targets)
    for hostname in ("web-1", "web-2", "db-1", "staging-1"):
        cells = row(browser, targets[hostname]["id"])
        status = cells.find_element("css selector", '[data-field="status"] .badge')
        assert status.text == targets[hostname]["status"].capitalize()
        assert status.get_attribute("class") == f"badge status-{targets[hostname]['status']}"
    db_checks = row(browser, targets["db-1"]["id"]).find_element(
        "css selector", '[data-field="checks"]'
    )
    assert "Critical\npostgres" in db_checks.text and "+2 OK" in db_checks.text
    assert "Databases" in row(browser, targets["db-1"]["id"]).text


def test_screenshots_at_desktop_and_phone_width(browser: Browser, live_fleet: Fleet) -> None:
    pages = {
        "overview": "/ui/",
        "target": f"/ui/targets/{live_fleet.agents['web-2'].agent_id}",
    }
    for name, path in pages.items():
        browser.open(path)
        wait_for(lambda: browser.live_updates() > 0, LIVE_TIMEOUT, "the first live update")
        for device, (width, _height) in (("desktop", DESKTOP), ("phone", PHONE)):
            mobile = device == "phone"
            emulate(browser.driver, width, 800, mobile=mobile)
            # Nothing wider than the screen: tables stack or scroll inside their card.
            page_width = browser.driver.execute_script(
                "return document.documentElement.scrollWidth"
            )
            assert page_width <= width, f"{name} is {page_width}px wide at {width}px"
            shot = SCREENSHOTS / f"{name}-{device}.png"
            full_page_png(browser.driver, shot, width, mobile=mobile)
            assert png_size(shot)[0] == width
            assert 10_000 < shot.stat().st_size < 600_000, shot.stat().st_size


def test_filter_form_narrows_the_table(browser: Browser, live_fleet: Fleet) -> None:
    from selenium.webdriver.support.ui import Select

    browser.open("/ui/")
    Select(browser.find("#f-group")).select_by_visible_text("Databases")
    browser.find("form.filters button[type=submit]").click()
    wait_for(lambda: "group=db" in browser.path, 10, "the filtered page")
    assert browser.texts("tr[data-target-id] .host-cell a") == ["db-1"]
    assert Select(browser.find("#f-group")).first_selected_option.text == "Databases"

    browser.find("form.filters a.button").click()  # Clear
    wait_for(lambda: browser.path == "/ui/", 10, "the unfiltered page")
    browser.find("#f-q").send_keys("web")
    Select(browser.find("#f-status")).select_by_value("failing")
    browser.find("form.filters button[type=submit]").click()
    wait_for(lambda: "status=failing" in browser.path, 10, "the filtered page")
    assert browser.texts("tr[data-target-id] .host-cell a") == ["web-2"]


def test_a_new_check_state_shows_on_the_overview_without_a_reload(
    browser: Browser, live_fleet: Fleet
) -> None:
    agent = live_fleet.add_agent("live-overview", labels={"os": "linux"})
    agent.heartbeat()
    agent.send(result("disk", "ok", "DISK OK - 12% used"))
    browser.open("/ui/?q=live-overview")
    checks = f'tr[data-target-id="{agent.agent_id}"] [data-field="checks"]'
    assert "All 1 OK" in browser.find(checks).text
    critical_before = tile_counts(browser)["checks.critical"]
    wait_for(lambda: browser.live_updates() > 0, LIVE_TIMEOUT, "the page to start polling")
    browser.mark_page()

    agent.send(result("disk", "critical", "DISK CRITICAL - 99% used"))

    wait_for(
        lambda: browser.find(checks).text == "Critical\ndisk",
        LIVE_TIMEOUT,
        "the row to show the critical disk check",
    )
    wait_for(
        lambda: tile_counts(browser)["checks.critical"] == critical_before + 1,
        LIVE_TIMEOUT,
        "the critical tile to count one more",
    )
    chip = browser.find(f"{checks} .badge")
    assert chip.get_attribute("class") == "badge status-critical"  # colour and text
    assert browser.same_page(), "the page reloaded instead of updating in place"


def test_a_new_result_shows_on_the_target_page_without_a_reload(
    browser: Browser, live_fleet: Fleet
) -> None:
    agent = live_fleet.add_agent("live-target", labels={"os": "linux"})
    agent.heartbeat()
    agent.send(result("disk", "critical", "DISK CRITICAL - 99% used"))
    browser.open(f"/ui/targets/{agent.agent_id}")
    status = 'tr[data-check-id="disk"] [data-field="status"]'
    output = 'tr[data-check-id="disk"] [data-field="output"]'
    assert browser.find(status).text == "Critical"
    wait_for(lambda: browser.live_updates() > 0, LIVE_TIMEOUT, "the page to start polling")
    browser.mark_page()

    agent.send(
        result("disk", "ok", "DISK OK - cleaned up", [{"label": "used", "value": 40, "uom": "%"}])
    )

    wait_for(
        lambda: browser.find(output).text == "DISK OK - cleaned up",
        LIVE_TIMEOUT,
        "the new output",
    )
    assert browser.find(status).text == "OK"
    assert browser.texts('tr[data-check-id="disk"] [data-field="perfdata"] li') == ["used=40%"]
    newest_event = browser.find("tbody[data-events] tr")
    assert "Critical → OK" in newest_event.text and "DISK OK - cleaned up" in newest_event.text
    assert browser.same_page(), "the page reloaded instead of updating in place"


def agent_id_with_late_first_run(check_id: str, interval: float) -> str:
    """An agent id whose first scheduled run of ``check_id`` comes 45 s or more after start
    (the splay is derived from the id), so any result before then was forced."""
    while True:
        candidate = str(uuid.uuid4())
        if splay_offset(candidate, check_id, interval) >= 45:
            return candidate


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    """A directory every user can read: an agent running as root runs its checks as
    ``nobody``, which cannot enter pytest's private temporary directories."""
    path = Path(tempfile.mkdtemp(prefix="aami-ui-plugins-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_run_now_reaches_a_real_agent_and_its_result_shows_live(
    browser: Browser,
    live_server: EmbeddedServer,
    live_fleet: Fleet,
    tmp_path: Path,
    plugin_dir: Path,
) -> None:
    plugins = plugin_dir
    plugin = plugins / "check_forced"
    plugin.write_text('#!/bin/sh\necho "FORCED OK - ran on request|runs=1;;;0"\n')
    plugin.chmod(0o755)
    agent_dir = tmp_path / "forced-agent"
    agent_dir.mkdir()
    agent_id = agent_id_with_late_first_run("forced", 3600)
    (agent_dir / "agent-id").write_text(agent_id + "\n")
    live_fleet.admin(
        "POST",
        "/checks",
        {"id": "forced", "command": [str(plugin)], "interval": "1h", "timeout": "10s",
         "assign": {"target_ids": [agent_id]}},
    )
    config = write_agent_config(
        agent_dir, server_url=live_server.url, bootstrap_token=live_fleet.bootstrap_token,
        allowed_paths=[str(plugins)], log_level="info", allowed_executables=["/bin/sh"],
        policy_keys=[live_server.policy_public_key],
    )
    agent = LiveAgent(config)
    try:
        agent.start()
        agent.wait_for_status(
            lambda s: "forced" in s.get("checks", {}), 20, "the forced check assigned"
        )
        browser.open(f"/ui/targets/{agent_id}")
        wait_for(
            lambda: browser.find('[data-field="target-status"]').text == "Online",
            LIVE_TIMEOUT,
            "the agent to show online",
        )
        row_css = 'tr[data-check-id="forced"]'
        assert browser.find(f"{row_css} [data-field='status']").text == "Pending"

        browser.find(f"{row_css} button[data-action='run-check']").click()
        wait_for(
            lambda: "Asked forced-agent to run forced now." in browser.find("main").text,
            10,
            "the confirmation",
        )
        browser.mark_page()  # the POST redirected here; from now on, no reload
        wait_for(
            lambda: browser.find(f"{row_css} [data-field='output']").text
            == "FORCED OK - ran on request",
            15,
            "the forced result on the page",
        )
        assert browser.find(f"{row_css} [data-field='status']").text == "OK"
        assert browser.same_page(), "the result appeared by a reload, not live"
        assert "running check forced now, as the server asked" in agent.log_text()
    finally:
        agent.stop()
    assert not agent.leftovers, agent.leftovers


def test_post_without_csrf_token_is_refused(browser: Browser, live_fleet: Fleet) -> None:
    target_id = live_fleet.agents["web-1"].agent_id
    browser.open(f"/ui/targets/{target_id}")
    action = f"/ui/targets/{target_id}/maintenance"

    assert browser.post_form(action, {"maintenance": "on"}) == 403
    assert live_fleet.admin("GET", f"/targets/{target_id}")["maintenance"] is False

    token = browser.find("input[name=csrf_token]").get_attribute("value")
    assert browser.post_form(action, {"maintenance": "on", "csrf_token": token}) == 200
    assert live_fleet.admin("GET", f"/targets/{target_id}")["maintenance"] is True
    live_fleet.admin("PATCH", f"/targets/{target_id}", {"maintenance": False})


def test_read_only_login_hides_write_buttons_and_refuses_forged_posts(
    browser: Browser, live_fleet: Fleet
) -> None:
    browser.log_in("read-only")
    target_id = live_fleet.agents["web-1"].agent_id
    browser.open(f"/ui/targets/{target_id}")
    assert "read-only" in browser.find(".who").text
    assert browser.find_all("[data-action]") == []
    assert len(browser.find_all("tr[data-check-id]")) == 3  # it still sees everything
    browser.open("/ui/tokens/")
    assert browser.find_all("#create-token") == []
    assert browser.find_all("[data-action='revoke']") == []

    # A forged form carrying the session's valid CSRF token: refused for the role.
    browser.open(f"/ui/targets/{target_id}")
    browser.driver.execute_script(
        """
        const form = document.createElement("form");
        form.method = "post";
        form.action = arguments[0];
        for (const [name, value] of Object.entries(arguments[1])) {
          const input = document.createElement("input");
          input.name = name; input.value = value; form.append(input);
        }
        document.body.append(form);
        form.submit();
        """,
        f"/ui/targets/{target_id}/checks/http/run",
        {"csrf_token": browser.find("input[name=csrf_token]").get_attribute("value")},
    )
    wait_for(lambda: "Not allowed" in browser.find("main").text, 10, "the 403 page")
    assert "read-only" in browser.find("main").text
    assert browser.find(".error-status").text == "403"
    assert live_fleet.agents["web-1"].heartbeat()["commands"] == []


def test_bootstrap_token_secret_is_shown_once_and_revoking_asks_first(
    browser: Browser, live_fleet: Fleet
) -> None:
    browser.open("/ui/tokens/")
    browser.find("#t-name").send_keys("browser-made")
    browser.find("#t-labels").send_keys("env=test")
    browser.find("#create-token button[type=submit]").click()
    secret = wait_for(lambda: browser.find("[data-secret]").text, 10, "the new secret")
    assert secret.startswith("aami_bt_")
    assert browser.find("button[data-copy]").is_displayed()  # the script offers a copy

    browser.open("/ui/tokens/")
    assert secret not in browser.find("main").text
    row_css = "tr[data-token-id][data-state='active']"
    rows = [r for r in browser.find_all(row_css) if "browser-made" in r.text]
    assert len(rows) == 1
    token_id = rows[0].get_attribute("data-token-id")
    revoke = f"tr[data-token-id='{token_id}'] button[data-action='revoke']"

    browser.find(revoke).click()
    browser.driver.switch_to.alert.dismiss()  # changed their mind: nothing happens
    assert browser.find(f"tr[data-token-id='{token_id}']").get_attribute("data-state") == "active"
    browser.find(revoke).click()
    browser.driver.switch_to.alert.accept()
    wait_for(
        lambda: browser.find(f"tr[data-token-id='{token_id}']").get_attribute("data-state")
        == "revoked",
        10,
        "the token to show as revoked",
    )
    reply = live_fleet.api.call(
        "POST", "/bootstrap-tokens/register", {"token": secret, "hostname": "late"}
    )
    assert reply[0] == 401


@pytest.fixture(autouse=True)
def _fail_on_browser_errors(request: pytest.FixtureRequest) -> Any:
    """A page script error anywhere fails the test that caused it."""
    yield
    if "browser" not in request.fixturenames or os.environ.get("AAMI_UI_IGNORE_JS_ERRORS"):
        return
    driver = request.getfixturevalue("chromium_driver")
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    # A 403 page is a deliberate answer in these tests, not a script error.
    errors = [e for e in errors if "403" not in e.get("message", "")]
    assert errors == [], errors
