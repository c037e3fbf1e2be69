"""``aami-server demo`` (what ``scripts/demo`` runs once the machine is set up) works.

It is run as a user runs it: one command, watched for a while, then Ctrl-C (SIGINT). The
screen must show the demo host online with its sample checks in their states, and Ctrl-C
must end everything it started: the server, its gunicorn worker and the agent each run in
a session of their own, so each session is checked for survivors.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from server.security.policy import load_policy_key, public_key_text
from tests.integration.live_server import AAMI_SERVER, aami_env, session_members
from tests.support.services import child_pids

pytestmark = pytest.mark.integration

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
EXPECTED_STATES = {"dummy-ok": "ok", "dummy-warning": "warning", "dummy-critical": "critical"}
SHOW_WITHIN_S = 45.0  # sample checks run every 10 s, the first after a splay
STOP_WITHIN_S = 20.0


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in child_pids(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes whose environment has ``name=value``."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def last_screen(output: str) -> str:
    return output.rsplit("AAMI demo - ", 1)[-1]


def test_demo_shows_the_host_and_its_checks_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    proc = subprocess.Popen(
        [str(AAMI_SERVER), "demo", "--data-dir", str(data_dir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=aami_env({}), cwd=tmp_path, start_new_session=True,
    )
    chunks: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(
        target=lambda: chunks.extend(iter(lambda: stdout.readline().decode(errors="replace"),
                                          "")),
        daemon=True)
    reader.start()
    sessions: set[int] = set()
    try:
        deadline = time.monotonic() + SHOW_WITHIN_S
        screen = ""
        while time.monotonic() < deadline and proc.poll() is None:
            sessions |= {sid for pid in descendants(proc.pid)
                         if (sid := _quietly_getsid(pid)) is not None}
            screen = last_screen("".join(chunks))
            if re.search(rf"{UUID}\s+online", screen) and all(
                re.search(rf"^\s+{check}\s+{state}\s", screen, re.MULTILINE)
                for check, state in EXPECTED_STATES.items()
            ):
                break
            time.sleep(0.5)
        output = "".join(chunks)
        assert proc.poll() is None, f"the demo exited {proc.returncode}:\n{output[-3000:]}"
        assert re.search(rf"{UUID}\s+online", screen), f"host not online:\n{screen}"
        for check, state in EXPECTED_STATES.items():
            assert re.search(rf"^\s+{check}\s+{state}\s+\S", screen, re.MULTILINE), (
                f"{check} is not {state}:\n{screen}")
        assert "something broke" in screen  # the plugin's own output is shown
        # It ran because the agent verified the server's signatures, not because it was
        # told to run whatever it gets.
        agent_config = yaml.safe_load((data_dir / "agent" / "agent.yaml").read_text())
        server_key = public_key_text(load_policy_key(data_dir / "policy.key"))
        assert agent_config["server"]["policy_keys"] == [server_key]
        assert "insecure_accept_unsigned_policies" not in agent_config["server"]
        # The server, its worker and the agent: the demo's processes, in their own sessions.
        assert len(sessions - {os.getsid(proc.pid)}) >= 2, sessions
        sessions.discard(os.getsid(proc.pid))

        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(STOP_WITHIN_S)
        took = time.monotonic() - began
    finally:
        _kill_everything(proc, sessions)
    reader.join(5)
    output = "".join(chunks)
    assert code == 0, output[-3000:]
    assert took < STOP_WITHIN_S
    assert output.rstrip().endswith("stopped."), output[-500:]
    left = {sid: session_members(sid) for sid in sessions}
    assert not any(left.values()), f"processes left behind: {left}"
    assert processes_with_env("AAMI_DATA_DIR", str(data_dir.resolve())) == []
    print(f"demo stopped {took:.2f}s after SIGINT")


def _quietly_getsid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


def _kill_everything(proc: subprocess.Popen[bytes], sessions: set[int]) -> None:
    """After a failure: nothing of the demo may outlive the test."""
    for sid in [proc.pid, *sessions]:
        for pid in session_members(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
