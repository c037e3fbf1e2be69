"""ansible/site.yml itself, with its group_vars, on localhost as both server and agent,
into a prefix: the servers' play makes the policy key and the agents' play trusts it;
pinned in aami_policy_public_keys it converges to ``changed=0``; a server signing with
a key the fleet does not trust fails its play before any agent is touched."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.ansible.playbooks import REPO, PlaybookRun, run_playbook
from tests.ansible.processes import clean_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

SITE = REPO / "ansible/site.yml"
INVENTORY = """\
all:
  vars:
    ansible_connection: local
    # Interpreter discovery may pick a shim that is not a working Python.
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  children:
    aami_servers:
      hosts:
        localhost: {}
    aami_agents:
      hosts:
        localhost: {}
"""


def site_variables(root: Path, wheel: Path, **overrides: object) -> dict[str, object]:
    """Extra vars over ansible/group_vars: a prefix, no services, no vault."""
    return {
        "aami_root": str(root),
        "aami_manage_service": False,
        "ansible_become": False,
        "aami_package": str(wheel),
        "aami_server_python": sys.executable,
        "aami_agent_python": sys.executable,
        # The vault's and the controller's files of group_vars, as a first deployment
        # without TLS would set them.
        "aami_server_secret_key": "s" * 40,
        "aami_server_database_url": "",
        "aami_server_redis_url": "",
        "aami_server_tls_cert": "",
        "aami_server_tls_key": "",
        "aami_bootstrap_token": "not-a-real-token",
        "aami_server_url": "http://127.0.0.1:9",
        "aami_tls_ca_cert": "",
        **overrides,
    }


def site(workdir: Path, variables: dict[str, object], name: str) -> PlaybookRun:
    workdir.mkdir(parents=True, exist_ok=True)
    inventory = workdir / "inventory.yml"
    inventory.write_text(INVENTORY)
    return run_playbook(SITE, workdir, str(inventory), variables, name=name)


def public_key_of(root: Path) -> str:
    done = subprocess.run(
        [str(root / "opt/aami-server/bin/aami-server"), "policy-key", "show"],
        env=clean_env({"AAMI_POLICY_KEY_FILE": str(root / "etc/aami-server/policy.key")}),
        capture_output=True, text=True, timeout=60, check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_site_hands_the_servers_policy_key_to_the_agents_and_guards_it(
    tmp_path: Path, wheel: Path
) -> None:
    root, workdir = tmp_path / "root", tmp_path / "ansible"

    first = site(workdir, site_variables(root, wheel), "first")
    assert first.returncode == 0, first.output_tail()
    assert "PLAY [Roll the AAMI agent out to the fleet]" in first.stdout
    key = public_key_of(root)
    config = yaml.safe_load((root / "etc/aami/agent.yaml").read_text())
    assert config["server"]["policy_keys"] == [key]
    assert f"Check policies are signed with {key}" in first.stdout

    pinned = site(workdir, site_variables(root, wheel, aami_policy_public_keys=[key]), "pinned")
    assert pinned.returncode == 0, pinned.output_tail()
    assert pinned.recap["changed"] == 0, pinned.changed_tasks()
    assert "Check policies are signed with" not in pinned.stdout

    other = base64.b64encode(os.urandom(32)).decode()
    wrong = site(workdir, site_variables(root, wheel, aami_policy_public_keys=[other]), "wrong")
    assert wrong.returncode != 0
    assert f"This server signs policies with {key}, which is not in" in " ".join(
        wrong.stdout.split())
    assert "PLAY [Roll the AAMI agent out to the fleet]" not in wrong.stdout
    # The agents kept what they had.
    assert yaml.safe_load((root / "etc/aami/agent.yaml").read_text()) == config
    # Nothing landed outside the prefix where the modules ran (the playbook's directory
    # and Ansible's working directory), such as a server signing key made by a CLI call.
    strays = [path for path in (SITE.parent / "var", workdir / "var") if path.exists()]
    assert strays == []
