"""ansible/install-agent.sh: the original design's install-time agent id, made once."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.ansible.playbooks import REPO

SCRIPT = REPO / "ansible/install-agent.sh"


def install(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AAMI_ROOT": str(root), **env},
        capture_output=True, text=True, timeout=30, check=False,
    )


def test_running_twice_keeps_the_same_id(tmp_path: Path) -> None:
    first = install(tmp_path)
    second = install(tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    id_file = tmp_path / "etc/aami/agent-id"
    stored = id_file.read_text()
    assert stored == first.stdout == second.stdout
    assert str(uuid.UUID(stored.strip())) == stored.strip()
    assert oct(stat.S_IMODE(id_file.stat().st_mode)) == "0o644"
    assert [p.name for p in id_file.parent.iterdir()] == ["agent-id"]


def test_uses_the_kernel_uuid_when_uuidgen_is_missing(tmp_path: Path) -> None:
    if not Path("/proc/sys/kernel/random/uuid").exists():
        pytest.skip("no /proc/sys/kernel/random/uuid here")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("dirname", "tr", "grep", "mkdir", "chmod", "mktemp", "cat", "ln", "rm"):
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True,
                               text=True, check=True).stdout.strip()
        (tools / tool).symlink_to(found)
    done = subprocess.run(
        ["/bin/sh", str(SCRIPT)], env={"PATH": str(tools), "AAMI_ROOT": str(tmp_path / "root")},
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr
    uuid.UUID(done.stdout.strip())


def test_a_given_id_is_used_once_and_never_replaces_another(tmp_path: Path) -> None:
    chosen = str(uuid.uuid4())
    assert install(tmp_path, AAMI_AGENT_ID=chosen.upper()).stdout.strip() == chosen
    other = install(tmp_path, AAMI_AGENT_ID=str(uuid.uuid4()))
    assert other.returncode == 1
    assert "never replaced" in other.stderr
    assert (tmp_path / "etc/aami/agent-id").read_text() == chosen + "\n"


def test_a_file_that_is_not_a_uuid_is_reported_and_left_alone(tmp_path: Path) -> None:
    id_file = tmp_path / "etc/aami/agent-id"
    id_file.parent.mkdir(parents=True)
    id_file.write_text("web-01\n")
    done = install(tmp_path)
    assert done.returncode == 1
    assert "does not hold a UUID" in done.stderr
    assert id_file.read_text() == "web-01\n"
