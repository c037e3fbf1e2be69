"""agent/identity.py: the agent's UUID is created once, atomically, and never replaced."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.identity import load_or_create_agent_id, read_agent_id


def test_missing_id_file_is_created_with_a_uuid4(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "aami" / "agent-id"  # parent directories are created too

    agent_id = load_or_create_agent_id(path)

    assert uuid.UUID(agent_id).version == 4
    assert path.read_text() == f"{agent_id}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["agent-id"]  # no temp files left


def test_existing_id_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "agent-id"
    first = load_or_create_agent_id(path)
    assert load_or_create_agent_id(path) == first
    assert read_agent_id(path) == first


def test_id_written_by_an_operator_is_read_in_canonical_form(tmp_path: Path) -> None:
    path = tmp_path / "agent-id"
    path.write_text("  6F1C2E9A-3B7D-4C1E-9F00-1234567890AB \n")
    assert load_or_create_agent_id(path) == "6f1c2e9a-3b7d-4c1e-9f00-1234567890ab"


def test_read_agent_id_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert read_agent_id(tmp_path / "agent-id") is None


@pytest.mark.parametrize("content", ["garbage\n", "1234", "6f1c2e9a-3b7d-4c1e-9f00\n"])
def test_invalid_id_file_is_refused_and_left_alone(tmp_path: Path, content: str) -> None:
    path = tmp_path / "agent-id"
    path.write_text(content)

    with pytest.raises(ConfigError) as info:
        load_or_create_agent_id(path)

    assert str(path) in str(info.value)
    assert "does not hold a valid UUID" in str(info.value)
    assert path.read_text() == content  # never silently replaced


def test_empty_id_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.identity._EMPTY_FILE_GRACE", 0.05)
    path = tmp_path / "agent-id"
    path.write_text("")
    with pytest.raises(ConfigError, match="does not hold a valid UUID"):
        load_or_create_agent_id(path)


def test_unreadable_id_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent-id"
    path.mkdir()
    with pytest.raises(ConfigError, match="cannot be read"):
        load_or_create_agent_id(path)


def test_id_file_under_a_regular_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="Not a directory"):
        load_or_create_agent_id(blocker / "agent-id")


def test_concurrent_creation_in_threads_yields_one_id(tmp_path: Path) -> None:
    path = tmp_path / "agent-id"
    barrier = threading.Barrier(16)
    ids: list[str] = []

    def start() -> None:
        barrier.wait()
        ids.append(load_or_create_agent_id(path))

    threads = [threading.Thread(target=start) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(ids) == 16 and len(set(ids)) == 1
    assert read_agent_id(path) == ids[0]


def test_concurrent_creation_in_processes_yields_one_id(tmp_path: Path) -> None:
    path = tmp_path / "agent-id"
    go = tmp_path / "go"
    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from agent.identity import load_or_create_agent_id\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
        f"print(load_or_create_agent_id(Path({str(path)!r})))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    go.write_text("")  # release them together
    outputs = [proc.communicate(timeout=30)[0].strip() for proc in procs]

    assert all(proc.returncode == 0 for proc in procs)
    assert len(set(outputs)) == 1
    assert read_agent_id(path) == outputs[0]


def test_registration_key_is_made_once_private_and_kept(tmp_path):
    from agent.identity import load_or_create_registration_key

    path = tmp_path / "state" / "registration.key"
    key = load_or_create_registration_key(path)
    assert len(key) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_registration_key(path) == key


def test_instance_id_is_kept_and_changes_with_the_machine(tmp_path):
    from agent.identity import load_or_create_instance_id

    path = tmp_path / "state" / "instance.id"
    machine = tmp_path / "machine-id"
    machine.write_text("1111\n")
    first = load_or_create_instance_id(path, (machine,))
    assert load_or_create_instance_id(path, (machine,)) == first
    # The same state directory on another machine (a cloned image) is another instance.
    machine.write_text("2222\n")
    assert load_or_create_instance_id(path, (machine,)) != first
    # A fresh install on the first machine is another instance too.
    machine.write_text("1111\n")
    path.unlink()
    assert load_or_create_instance_id(path, (machine,)) != first
