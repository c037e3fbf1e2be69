"""Signed policies by default, end to end: a real ``aami-agent`` installed with the
default configuration (no ``server.policy_keys``, no insecure option) talking plain HTTP
to ``aami-server serve`` refuses the policies it is sent, runs nothing of them, and says
what to configure. (Pinning over verified TLS is in test_mtls.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.agent_system import running_system
from tests.integration.live_server import LiveServer

pytestmark = pytest.mark.integration


def test_a_default_agent_over_http_runs_nothing_and_says_what_to_configure(
    live_server: LiveServer, tmp_path: Path
) -> None:
    with running_system(live_server, tmp_path, agent_options={"policy_keys": []}) as system:
        marker = system.shared_file("ran")
        command = system.write_plugin("mark", f'echo ran >> {marker}\necho "OK - ran"\n')
        system.admin.create_check("mark", [command], target_id=system.agent_id, interval="2s")

        status = system.agent.wait_for_status(
            lambda s: "learns none over plain HTTP" in (s.get("policy_error") or ""),
            30, "the refusal of the policy")
        assert "set server.policy_keys to the server's key" in status["policy_error"]
        assert status["policy_trust"].startswith("every policy refused")
        assert status["checks"] == {}
        assert marker.read_text() == ""
        assert system.admin.results(system.agent_id, "mark") == []
        assert not (system.agent.status_path.parent / "policy-keys.json").exists()
