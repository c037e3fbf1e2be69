"""roles/aami_agent applied to a prefix on this machine, twice (fixture ``agent_install``)."""

from __future__ import annotations

import stat
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from agent.config import load_config
from tests.ansible.conftest import Applied, agent_variables
from tests.ansible.playbooks import apply_role

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def test_first_run_changes_the_host_and_the_second_changes_nothing(
    agent_install: Applied,
) -> None:
    first, second = agent_install.first.recap, agent_install.second.recap
    assert first["failed"] == 0 and first["changed"] > 0, agent_install.first.output_tail()
    assert second["failed"] == 0
    assert second["changed"] == 0, (
        f"the second run changed: {agent_install.second.changed_tasks()}\n"
        f"{agent_install.second.output_tail()}"
    )


def test_agent_id_is_created_once_as_a_uuid_and_kept(agent_install: Applied) -> None:
    first, second = agent_install.agent_id_after_first, agent_install.agent_id_after_second
    assert first == second
    assert first.endswith("\n")
    assert str(uuid.UUID(first.strip())) == first.strip()


def test_deployed_agent_reads_the_same_id_from_its_configuration(agent_install: Applied) -> None:
    root = agent_install.root
    done = subprocess.run(
        [str(root / "opt/aami/bin/aami-agent"), "id", "-c", str(root / "etc/aami/agent.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == agent_install.agent_id_after_second.strip()


def test_configuration_holds_every_documented_key_inside_the_prefix(
    agent_install: Applied,
) -> None:
    root = agent_install.root
    config = yaml.safe_load((root / "etc/aami/agent.yaml").read_text())
    assert config["server"]["address"] == "http://127.0.0.1:9"
    assert config["server"]["bootstrap_token_file"] == f"{root}/etc/aami/bootstrap-token"
    assert config["server"]["tls"] == {"enabled": False, "ca_cert": "", "client_cert": "",
                                       "client_key": "", "enroll": False}
    # No policy keys given: the key is left out, not written empty; nor is the insecure
    # option written, so the agent refuses what it cannot verify.
    assert "policy_keys" not in config["server"]
    assert "insecure_accept_unsigned_policies" not in config["server"]
    assert config["agent"] == {
        "id_file": f"{root}/etc/aami/agent-id",
        "hostname": "",
        "group": "",
        # The inventory's number became the string the agent requires.
        "labels": {"environment": "test", "rack": "12"},
        "state_dir": f"{root}/var/lib/aami",
    }
    assert set(config["heartbeat"]) == {"interval", "timeout"}
    assert set(config["checks"]) == {
        "default_timeout", "max_concurrent", "result_buffer_size", "allowed_paths",
        "exec_containment", "allowed_executables"}
    assert config["checks"]["allowed_paths"][-1] == f"{root}/etc/aami/checks"
    assert config["checks"]["exec_containment"] == "auto"
    assert config["checks"]["allowed_executables"] == []
    assert config["logging"] == {"level": "info", "format": "json"}


def test_exec_containment_settings_reach_the_agent_as_set(
    agent_install: Applied, tmp_path: Path
) -> None:
    # A configuration file of its own next to the installed one, so that the shared install
    # the other tests look at keeps its agent.yaml; the role's venv validates it.
    variables = {
        **agent_install.variables,
        "aami_agent_config_file": "/etc/aami/agent-containment.yaml",
        "aami_agent_exec_containment": "denylist",
        "aami_agent_allowed_executables": ["/usr/bin/perl", "/bin/sh"],
    }
    run = apply_role("aami_agent", tmp_path, variables, tags="configure")
    assert run.returncode == 0, run.output_tail()
    written = agent_install.root / "etc/aami/agent-containment.yaml"
    checks = yaml.safe_load(written.read_text())["checks"]
    assert checks["exec_containment"] == "denylist"
    assert checks["allowed_executables"] == ["/usr/bin/perl", "/bin/sh"]
    loaded = load_config(written).checks
    assert loaded.exec_containment == "denylist"
    assert loaded.allowed_executables == ("/usr/bin/perl", "/bin/sh")


def test_an_unknown_exec_containment_mode_fails_before_anything_is_written(
    tmp_path: Path, wheel: Path
) -> None:
    variables = agent_variables(tmp_path / "root", wheel, aami_agent_exec_containment="sandbox")
    run = apply_role("aami_agent", tmp_path, variables)
    assert run.returncode != 0
    assert "aami_agent_exec_containment" in run.stdout, run.output_tail()
    assert not (tmp_path / "root").exists()


def test_secrets_and_state_have_tight_modes(agent_install: Applied) -> None:
    root = agent_install.root
    assert mode(root / "etc/aami/bootstrap-token") == "0o600"
    assert (root / "etc/aami/bootstrap-token").read_text() == "not-a-real-token\n"
    assert mode(root / "etc/aami/agent.yaml") == "0o640"
    assert mode(root / "etc/aami/agent-id") == "0o644"
    assert mode(root / "var/lib/aami") == "0o750"
    assert mode(root / "etc/systemd/system/aami-agent.service") == "0o644"


def test_unit_runs_the_prefixed_agent_unprivileged_and_sandboxed(agent_install: Applied) -> None:
    root = agent_install.root
    unit = (root / "etc/systemd/system/aami-agent.service").read_text()
    assert unit.startswith("#\n# Ansible managed\n")
    lines = set(unit.splitlines())
    assert (
        f"ExecStart={root}/opt/aami/bin/aami-agent run -c {root}/etc/aami/agent.yaml" in lines
    )
    for setting in (
        "User=aami", "Group=aami", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
        "RestartSec=5s", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
        "PrivateTmp=yes", f"ReadWritePaths={root}/var/lib/aami", "CapabilityBoundingSet=",
        "ProtectKernelTunables=yes", "ProtectControlGroups=yes", "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
    ):
        assert setting in lines, setting


def test_an_existing_id_is_never_replaced_by_the_inventory(
    agent_install: Applied, tmp_path: Path
) -> None:
    variables = {
        **agent_install.variables,
        "aami_agent_id": str(uuid.uuid4()),
    }
    run = apply_role("aami_agent", tmp_path, variables, tags="configure")
    assert run.returncode != 0
    assert "never replaces an agent id" in run.stdout, run.output_tail()
    assert (agent_install.root / "etc/aami/agent-id").read_text() == (
        agent_install.agent_id_after_second
    )


def test_a_relocated_install_refuses_to_manage_the_service(
    tmp_path: Path, wheel: Path
) -> None:
    variables = agent_variables(tmp_path / "root", wheel, aami_manage_service=True)
    run = apply_role("aami_agent", tmp_path, variables)
    assert run.returncode != 0
    assert "needs aami_manage_service=false" in run.stdout, run.output_tail()
    assert not (tmp_path / "root").exists()
