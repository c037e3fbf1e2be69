"""The units the roles write pass ``systemd-analyze verify`` without a single warning.

The roles were applied to prefixes with real venvs (fixtures ``agent_install`` and
``server_install``), and a relocated install refers to its own paths, so every
``ExecStart=`` names a program that exists: verify checks the very files the roles
wrote, as they are. ``systemd-analyze security --offline`` scores their sandboxing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ansible.conftest import Applied
from tests.support.services import skip_or_fail

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# Exposure levels systemd-analyze gives the units today (0 best, 10 worst): the agent
# stays looser so that Nagios plugins can see the host; a regression fails here.
MAX_EXPOSURE = {
    "aami-agent.service": 4.0,
    "aami-server.service": 2.5,
    "aami-server-worker@.service": 2.5,
    "aami-server-cron.service": 2.5,
}


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        skip_or_fail("systemd-analyze is not installed (Debian: apt install systemd)")
    return found


def units(agent: Applied, server: Applied) -> list[Path]:
    return [
        agent.root / "etc/systemd/system/aami-agent.service",
        *(server.root / "etc/systemd/system" / name for name in (
            "aami-server.service", "aami-server-worker@.service", "aami-server-cron.service")),
    ]


def assert_verifies_without_warnings(unit: Path) -> None:
    done = subprocess.run(
        [systemd_analyze(), "verify", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    # verify reports some mistakes (unknown keys, bad values) as warnings with exit 0.
    assert (done.returncode, done.stderr) == (0, ""), f"{unit}:\n{done.stdout}{done.stderr}"


def exposure(unit: Path) -> tuple[float, str]:
    """systemd-analyze's overall exposure level of ``unit``, and its report."""
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert found, f"no exposure level in:\n{done.stdout}{done.stderr}"
    return float(found[1]), done.stdout


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_unit_passes_systemd_analyze_verify_without_warnings(
    name: str, agent_install: Applied, server_install: Applied
) -> None:
    unit = next(u for u in units(agent_install, server_install) if u.name == name)
    assert_verifies_without_warnings(unit)


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_unit_is_sandboxed(name: str, agent_install: Applied, server_install: Applied) -> None:
    unit = next(u for u in units(agent_install, server_install) if u.name == name)
    level, report = exposure(unit)
    assert level <= MAX_EXPOSURE[name], report


def test_api_unit_with_gevent_and_mutual_tls_verifies_and_stays_sandboxed(
    server_mtls_install: Applied,
) -> None:
    """The production defaults (gevent, client CA and the built-in CA's key) change the
    API unit's command line and comments: the unit still verifies and scores the same."""
    unit = server_mtls_install.root / "etc/systemd/system/aami-server.service"
    assert "--worker-class gevent" in unit.read_text()
    assert_verifies_without_warnings(unit)
    level, report = exposure(unit)
    assert level <= MAX_EXPOSURE["aami-server.service"], report
