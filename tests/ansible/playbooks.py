"""Run the roles the way an operator does: ``ansible-playbook`` as a subprocess.

Every run gets an environment of its own: no ``ansible.cfg`` of the developer's, no
``ANSIBLE_*`` or ``AAMI_*`` variables, Ansible's home and temporary files inside the test's
directory, the roles from this checkout. Roles are applied to localhost over the local
connection, into a prefix (``aami_root``) with ``aami_manage_service: false``, so nothing
outside the prefix changes and no service manager is needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"
# What the Dockerfile's builder stage copies: the sources a wheel is built from.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "agent", "server", "migrations")
PLAYBOOK_TIMEOUT = 600.0

_RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclass(frozen=True)
class PlaybookRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def recap(self) -> dict[str, int]:
        """localhost's line of the PLAY RECAP: ok, changed, unreachable, failed."""
        found = [m for m in _RECAP.finditer(self.stdout) if m["host"] == "localhost"]
        assert found, f"no PLAY RECAP for localhost in the output:\n{self.output_tail()}"
        last = found[-1]
        return {key: int(last[key]) for key in ("ok", "changed", "unreachable", "failed")}

    def changed_tasks(self) -> list[str]:
        """Names of the tasks that reported a change (for assertion messages)."""
        names, current = [], None
        for line in self.stdout.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                current = line.split("[", 1)[1].rsplit("]", 1)[0]
            elif line.startswith("changed:") and current and current not in names:
                names.append(current)
        return names

    def output_tail(self, lines: int = 60) -> str:
        text = (self.stdout + "\n--- stderr\n" + self.stderr).splitlines()
        return "\n".join(text[-lines:])


def ansible_env(workdir: Path) -> dict[str, str]:
    """This process's environment minus Ansible and AAMI settings, plus isolated ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "AAMI_"))}
    config = workdir / "ansible.cfg"
    if not config.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        config.write_text("# empty: the defaults, not the developer's settings\n")
    env.update(
        ANSIBLE_CONFIG=str(config),
        ANSIBLE_ROLES_PATH=str(REPO / "roles"),
        ANSIBLE_HOME=str(workdir / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(workdir / "ansible-tmp"),
        ANSIBLE_REMOTE_TMP=str(workdir / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_DISPLAY_SKIPPED_HOSTS="0",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def apply_role(
    role: str, workdir: Path, variables: Mapping[str, Any], tags: str | None = None
) -> PlaybookRun:
    """Apply ``role`` to localhost with ``variables`` as extra vars (only ``tags``, if any)."""
    workdir.mkdir(parents=True, exist_ok=True)
    playbook = workdir / f"apply-{role}.yml"
    playbook.write_text(
        f"""- name: Apply {role}
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    # Interpreter discovery may pick a shim that is not a working Python.
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
  roles:
    - role: {role}
"""
    )
    return run_playbook(playbook, workdir, "localhost,", variables, name=role, tags=tags)


def run_playbook(
    playbook: Path,
    workdir: Path,
    inventory: str,
    variables: Mapping[str, Any],
    *,
    name: str,
    tags: str | None = None,
) -> PlaybookRun:
    """``ansible-playbook -i INVENTORY PLAYBOOK -e @VARS`` in ``workdir``, isolated from
    the developer's Ansible settings; ``name`` names the extra-vars file."""
    workdir.mkdir(parents=True, exist_ok=True)
    extra_vars = workdir / f"{name}-vars.json"
    extra_vars.write_text(json.dumps(dict(variables), indent=2))
    argv = [str(ANSIBLE_PLAYBOOK), "-i", inventory, str(playbook), "-e", f"@{extra_vars}"]
    done = subprocess.run(
        argv + (["--tags", tags] if tags else []),
        env=ansible_env(workdir),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PLAYBOOK_TIMEOUT,
        check=False,
    )
    return PlaybookRun(done.returncode, done.stdout, done.stderr)


def build_wheel(workdir: Path) -> Path:
    """A fresh wheel of this checkout, built from a copy of its sources (as the Dockerfile
    does): nothing is written into the checkout, and no stale ``build/`` gets in."""
    source = workdir / "src"
    for name in WHEEL_SOURCES:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(
                origin, source / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
            )
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, source / name)
    dist = workdir / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-q", "-w", str(dist), str(source)],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PLAYBOOK_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    wheels = sorted(dist.glob("aami-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]
