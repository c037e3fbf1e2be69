"""ansible-lint, production profile, over the roles and the playbooks (offline: see
.ansible-lint)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.ansible.playbooks import REPO, VENV_BIN, ansible_env
from tests.support.services import skip_or_fail

pytestmark = pytest.mark.timeout(300)


def test_roles_and_playbooks_pass_ansible_lint_production_profile(tmp_path: Path) -> None:
    lint = VENV_BIN / "ansible-lint"
    if not lint.exists():
        skip_or_fail("ansible-lint is not installed in the venv (the dev extra installs it)")
    env = ansible_env(tmp_path)
    # The checkout's own settings (.ansible-lint) apply; roles come from roles/.
    del env["ANSIBLE_CONFIG"]
    done = subprocess.run(
        [str(lint), "--profile", "production", "--nocolor", "roles", "ansible"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
