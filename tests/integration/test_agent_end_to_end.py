"""Acceptance of the node agent: a real agent runs Debian's plugins for a real server.

``aami-server serve`` (gunicorn, PostgreSQL, Redis) + ``aami-server worker`` +
``aami-agent run``. The checks are assigned through the admin API; what the agent
reports is read back through the admin API, the way an operator sees it.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent_system import AgentSystem, parse_time, plugin, running_system
from tests.integration.live_server import LiveServer

pytestmark = pytest.mark.integration

LOAD_WARN, LOAD_CRIT = (50.0, 40.0, 30.0), (100.0, 80.0, 60.0)
DISK_UNITS = {"B", "KB", "kB", "KiB", "MB", "MiB", "GB", "GiB", "TB", "TiB"}

# check id -> (command, status, exit code, output as the plugin prints it)
DUMMIES: dict[str, tuple[list[str], str, int, str]] = {
    "dummy-ok": ([plugin("check_dummy"), "0", "all good: 42 widgets"], "ok", 0,
                 "OK: all good: 42 widgets"),
    "dummy-warning": ([plugin("check_dummy"), "1"], "warning", 1, "WARNING"),
    "dummy-critical": ([plugin("check_dummy"), "2"], "critical", 2, "CRITICAL"),
    "dummy-unknown": ([plugin("check_dummy"), "3"], "unknown", 3, "UNKNOWN"),
}
LOAD = [plugin("check_load"), "-w", ",".join(map(str, LOAD_WARN)),
        "-c", ",".join(map(str, LOAD_CRIT))]
DISK = [plugin("check_disk"), "-w", "10%", "-c", "5%", "-p", "/"]


@pytest.fixture
def system(live_server: LiveServer, tmp_path: Path) -> Iterator[AgentSystem]:
    with running_system(live_server, tmp_path) as running:
        yield running


def by_label(perfdata: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["label"]: item for item in perfdata}


def disk_status_now() -> str:
    """What ``check_disk -w 10% -c 5%`` must say about / (free space as non-root sees it)."""
    fs = os.statvfs("/")
    free_pct = 100.0 * fs.f_bavail / (fs.f_bavail + (fs.f_blocks - fs.f_bfree))
    return "critical" if free_pct < 5 else "warning" if free_pct < 10 else "ok"


def test_agent_runs_assigned_plugins_and_the_server_shows_every_result(
    system: AgentSystem,
) -> None:
    started = time.time()
    for check_id, (command, *_) in DUMMIES.items():
        system.add_check(check_id, command, interval="3s")
    system.add_check("load", LOAD, interval="3s")
    system.add_check("root-disk", DISK, interval="3s")
    wanted = {*DUMMIES, "load", "root-disk"}

    states = system.wait_for_states(wanted, timeout=30)

    assert set(states) == wanted, system.logs()
    for check_id, (_, status, exit_code, output) in DUMMIES.items():
        state = states[check_id]
        assert (state["status"], state["exit_code"], state["output"]) == (
            status, exit_code, output), state
        assert state["perfdata"] == []
        history = system.admin.results(system.agent_id, check_id)
        assert history, f"no result history for {check_id}"
        for result in history:
            assert (result["status"], result["exit_code"], result["output"]) == (
                status, exit_code, output)
            assert str(uuid.UUID(result["result_id"])) == result["result_id"]
            assert 0 <= result["duration_ms"] < 5000
            assert started - 1 <= parse_time(result["executed_at"]) <= time.time()

    # check_load: thresholds far above any real load, so OK, and load1/5/15 parsed out of
    # the perfdata, agreeing with the figures in the plugin's own text.
    load = states["load"]
    assert (load["status"], load["exit_code"]) == ("ok", 0), load
    assert load["output"].startswith("LOAD OK - "), load["output"]
    assert "|" not in load["output"]
    text_figures = [float(x) for x in re.findall(r"(\d+\.\d+)", load["output"])[-3:]]
    perf = by_label(load["perfdata"])
    assert list(perf) == ["load1", "load5", "load15"]
    for (label, item), figure, warn, crit in zip(
        perf.items(), text_figures, LOAD_WARN, LOAD_CRIT, strict=True
    ):
        assert item["value"] == pytest.approx(figure, abs=0.006), (label, item, load["output"])
        assert (item["warn"], item["crit"], item["min"]) == (warn, crit, 0.0), item
        assert item["uom"] in ("", None)

    # check_disk on /: one perfdata item labelled "/", in a unit of bytes, whose used/total
    # ratio is what statvfs says now, with the thresholds at 90% and 95% of the total.
    disk = states["root-disk"]
    expected = disk_status_now()
    assert (disk["status"], disk["exit_code"]) == (
        expected, {"ok": 0, "warning": 1, "critical": 2}[expected]), disk
    assert disk["output"].startswith(f"DISK {expected.upper()} - free space: / "), disk["output"]
    root = by_label(disk["perfdata"])["/"]
    assert root["uom"] in DISK_UNITS, root
    fs = os.statvfs("/")
    used_ratio = (fs.f_blocks - fs.f_bfree) / fs.f_blocks
    assert root["max"] > root["value"] > 0, root
    assert root["value"] / root["max"] == pytest.approx(used_ratio, abs=0.02), root
    assert root["warn"] / root["max"] == pytest.approx(0.90, abs=0.01), root
    assert root["crit"] / root["max"] == pytest.approx(0.95, abs=0.01), root
    assert root["min"] == 0.0

    # The same facts in the result history, and the agent said it is running them all.
    last_disk = system.admin.results(system.agent_id, "root-disk", limit=1)[0]
    assert by_label(last_disk["perfdata"])["/"]["uom"] == root["uom"]
    assert set(system.agent.status()["checks"]) == wanted
    target = system.admin.target(system.agent_id)
    assert target["status"] == "online"
    assert target["hostname"] == "agent"
