"""End to end: the agent role deploys a wheel of this checkout, and that agent works.

A host gets its id from install-agent.sh (the original design's install step), the role
installs the agent into a prefix with a bootstrap token from a running config-server,
and the deployed ``aami-agent`` - started from the prefix's venv with the role's
``agent.yaml`` - registers under that same id, comes online and reports the check that
the server assigned to its labels. Everything is stopped and nothing is left running.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.ansible.conftest import agent_variables
from tests.ansible.playbooks import REPO, apply_role
from tests.ansible.processes import DeployedAgent, EmbeddedServer, session_members
from tests.integration.processes import wait_until
from tests.support.services import skip_or_fail

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CHECK_DUMMY = Path("/usr/lib/nagios/plugins/check_dummy")


def test_deployed_agent_registers_with_its_install_time_id_and_reports_results(
    tmp_path: Path, wheel: Path
) -> None:
    if not CHECK_DUMMY.exists():
        skip_or_fail(f"{CHECK_DUMMY} is missing (Debian: apt install monitoring-plugins)")
    root = tmp_path / "root"
    installed = subprocess.run(
        [str(REPO / "ansible/install-agent.sh")],
        env={"AAMI_ROOT": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert installed.returncode == 0, installed.stderr
    agent_id = installed.stdout.strip()

    server = EmbeddedServer(tmp_path / "server")
    agent = DeployedAgent(root, tmp_path / "agent-log")
    try:
        server.start()
        bootstrap_token = server.cli("token", "create", "--name", "ansible-e2e")
        admin = {"Authorization": f"Bearer {server.cli('admin-token', 'create', '--name', 'e2e')}"}
        created = requests.post(server.api("checks"), headers=admin, timeout=10, json={
            "id": "deployed-dummy",
            "name": "dummy check of the deployed agent",
            "command": [str(CHECK_DUMMY), "1", "deployed by ansible"],
            "interval": "2s",
            "timeout": "2s",
            "assign": {"labels": {"environment": "e2e"}},
        })
        assert created.status_code == 201, created.text

        run = apply_role("aami_agent", tmp_path / "ansible", agent_variables(
            root, wheel,
            aami_server_url=server.url,
            aami_bootstrap_token=bootstrap_token,
            aami_agent_labels={"environment": "e2e", "deployed_by": "ansible"},
            aami_agent_heartbeat_interval="2s",
            # Generous on a busy test machine: a registration whose reply comes too late
            # cannot be retried (the server answers 409 agent_id_in_use to the retry).
            aami_agent_heartbeat_timeout="30s",
            aami_agent_log_format="text",
            aami_agent_config_extra={"results": {"flush_interval": "500ms"}},
            # Plain HTTP: the agent runs only what this key signed (site.yml passes it).
            aami_agent_policy_keys=[server.cli("policy-key", "show")],
        ))
        assert run.returncode == 0, run.output_tail()
        assert (root / "etc/aami/agent-id").read_text().strip() == agent_id

        agent.start()

        def target() -> dict[str, Any] | None:
            reply = requests.get(server.api("targets"), headers=admin, timeout=10)
            reply.raise_for_status()
            mine = [t for t in reply.json() if t["id"] == agent_id]
            return mine[0] if mine and mine[0]["status"] == "online" else None

        try:
            online = wait_until(target, 60, f"target {agent_id} online")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nagent log:\n{agent.log_text()[-3000:]}") from None
        assert online["labels"] == {"environment": "e2e", "deployed_by": "ansible"}

        def check_state() -> dict[str, Any] | None:
            reply = requests.get(server.api(f"targets/{agent_id}/checks"), headers=admin,
                                 timeout=10)
            reply.raise_for_status()
            states = [s for s in reply.json() if s["check_id"] == "deployed-dummy"]
            return states[0] if states else None

        try:
            state = wait_until(check_state, 60, "a result of the assigned check")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nagent log:\n{agent.log_text()[-3000:]}") from None
        assert state["status"] == "warning"
        assert state["exit_code"] == 1
        assert "deployed by ansible" in state["output"]
    finally:
        agent.stop()
        server.stop()

    left = {name: session_members(process.session_id)
            for name, process in (("server", server), ("agent", agent))
            if process.session_id is not None}
    assert left == {"server": [], "agent": []}, f"processes left behind: {left}"
