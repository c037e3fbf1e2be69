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


POLICY_KEY = "6G3g0mHc8pPOLJq5CmXbgqdrvSlD9J0vCMKxGrtOCkg="


def agent_config(root: Path, server_section: str) -> Path:
    config = root / "etc/aami/agent.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"# mine\nserver:\n{server_section}agent:\n    state_dir: /var/lib/aami\n")
    config.chmod(0o640)
    return config


def test_a_policy_key_is_added_to_the_agents_configuration_once(tmp_path: Path) -> None:
    import yaml

    from agent.config import load_config

    config = agent_config(tmp_path, "    address: http://aami:8080\n    bootstrap_token: t\n")
    first = install(tmp_path, AAMI_POLICY_KEY=POLICY_KEY)
    again = install(tmp_path, AAMI_POLICY_KEY=POLICY_KEY)
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert first.stdout == again.stdout  # the id, as without a key
    data = yaml.safe_load(config.read_text())
    assert data["server"]["policy_keys"] == [POLICY_KEY]
    assert config.read_text().count(POLICY_KEY) == 1
    assert config.read_text().startswith("# mine\n")
    assert oct(stat.S_IMODE(config.stat().st_mode)) == "0o640"
    assert load_config(config, check_files=False).server.policy_keys == (POLICY_KEY,)


@pytest.mark.parametrize(
    ("server_section", "message"),
    [(None, "there is no"),
     ("  address: x\n  policy_keys: [c2hvcnQ=]\n", "already lists other server.policy_keys"),
     ],
    ids=["no-config", "other-keys"],
)
def test_a_policy_key_never_replaces_what_is_there(
    tmp_path: Path, server_section: str | None, message: str
) -> None:
    config = None if server_section is None else agent_config(tmp_path, server_section)
    before = None if config is None else config.read_text()
    done = install(tmp_path, AAMI_POLICY_KEY=POLICY_KEY)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    if config is not None:
        assert config.read_text() == before


def test_a_malformed_policy_key_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    done = install(tmp_path, AAMI_POLICY_KEY="not-a-key")
    assert done.returncode == 1
    assert "AAMI_POLICY_KEY=not-a-key is not a base64 Ed25519 public key" in done.stderr
    assert not (tmp_path / "etc/aami/agent-id").exists()
