"""A real agent keeps its checks from running programs past its exec containment.

``negate`` from Debian's monitoring-plugins runs whatever its arguments name. A check
``negate -o OK /bin/sh -c 'echo ran >> FILE'`` from an allowed directory must not run a
shell: with Landlock (the default where the kernel offers it, as on this machine kind) the
kernel refuses the exec; with the denylist, the agent refuses the check before start.
Either way the result is ``unknown`` with the reason, real ELF plugins still run, and
``aami-agent status`` says which containment is active.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import containment
from tests.integration.agent_system import AgentSystem, plugin, running_system
from tests.integration.live_server import LiveServer
from tests.integration.processes import AAMI_AGENT

pytestmark = pytest.mark.integration


@pytest.fixture(params=["auto", "denylist"])
def system(request: pytest.FixtureRequest, live_server: LiveServer,
           tmp_path: Path) -> Iterator[tuple[AgentSystem, str]]:
    """A running agent with ``checks.exec_containment`` set to the parameter, and the
    containment it must end up with."""
    mode = request.param
    if mode == "auto" and not containment.landlock_abi():
        pytest.skip("this kernel does not offer Landlock")
    # Nothing past the allowed paths: the agent's configuration by default.
    options = {"allowed_executables": [], "exec_containment": mode}
    with running_system(live_server, tmp_path, agent_options=options) as running:
        yield running, "landlock" if mode == "auto" else "denylist"


def status_text(system: AgentSystem) -> str:
    shown = subprocess.run([str(AAMI_AGENT), "status", "-c", str(system.agent.config)],
                           capture_output=True, text=True, timeout=30, check=True)
    return shown.stdout


def test_a_wrapper_plugin_cannot_run_a_shell_and_real_plugins_still_run(
    system: tuple[AgentSystem, str],
) -> None:
    system, expected_mode = system
    ledger = system.shared_file("a-shell-ran.txt")  # a shell would append to it
    system.add_check("negate-shell", [plugin("negate"), "-o", "OK", "/bin/sh", "-c",
                                      f"echo ran >> {ledger}"], interval="3s")
    system.add_check("dummy", [plugin("check_dummy"), "0", "still fine"], interval="3s")

    refused = system.wait_for_results("negate-shell")[0]
    dummy = system.wait_for_results("dummy")[0]

    assert ledger.read_text() == "", "a shell ran"
    assert refused["status"] == "unknown", system.logs()
    assert system.agent.status()["exec_containment"]["mode"] == expected_mode
    if expected_mode == "landlock":
        assert ("exec containment (landlock): /bin/sh is outside what checks may execute"
                in refused["output"]), refused["output"]
        assert f"exec containment: landlock (ABI {containment.landlock_abi()})" in \
            status_text(system)
    else:
        assert "runs other programs, which the exec containment in use (denylist" in \
            refused["output"], refused["output"]
        assert ("exec containment: denylist (checks.exec_containment is denylist)"
                in status_text(system))
    assert (dummy["status"], dummy["output"]) == ("ok", "OK: still fine")
