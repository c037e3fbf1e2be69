"""The spawner processes (agent/spawner.py, agent/spawn_server.py): plugins start from a
long-lived, already sandboxed process, and nothing is lost or left behind when that
process dies, retires or is let go."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from agent.executor import Executor
from agent.limits import DEFAULT_LIMITS
from agent.model import CheckResult, CheckSpec, ResourceLimits
from agent.sandbox import CheckUser, resolve_user
from agent.spawner import Spawner, SpawnerPool

pytestmark = pytest.mark.timeout(60)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def plugin(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def spec(*command: str, timeout: float = 10, limits: ResourceLimits | None = None) -> CheckSpec:
    return CheckSpec(id="c1", name="c1", command=tuple(command), interval=60, timeout=timeout,
                     limits=limits or ResourceLimits())


def nobody() -> CheckUser:
    return resolve_user("nobody")


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def alive(pid: int) -> bool:
    try:
        state = proc_status(pid).get("State", "")
    except (FileNotFoundError, ProcessLookupError):  # gone before or while it was read
        return False
    return not state.startswith("Z")


def wait_for(condition, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def only_spawner(executor: Executor) -> Spawner:
    pool = executor._spawners
    assert pool is not None
    spawners = list(pool._spawners.values())
    assert len(spawners) == 1
    return spawners[0]


@needs_root
def test_plugins_start_from_a_spawner_that_carries_the_whole_sandbox(plugin_dir: Path) -> None:
    executor = Executor([str(plugin_dir)], DEFAULT_LIMITS, user=nobody(), no_new_privs=True)
    try:
        path = plugin(plugin_dir, "parent", 'echo "$PPID $(id -u)"')
        first = executor.run(spec(path))
        second = executor.run(spec(path))
        spawner = only_spawner(executor)
        assert first.output == second.output == f"{spawner.pid} {nobody().uid}"
        status = proc_status(spawner.pid)
        assert status["Uid"].split()[0] == str(nobody().uid)
        assert status["NoNewPrivs"] == "1"
        assert status["Groups"].strip() in ("", str(nobody().gid))
        limits = Path(f"/proc/{spawner.pid}/limits").read_text()
        assert f"Max address space         {512 * 1024 * 1024}" in limits
        assert "Max cpu time              60                   61" in limits
    finally:
        executor.close()


def test_a_check_with_its_own_limits_gets_a_spawner_of_its_own(plugin_dir: Path) -> None:
    executor = Executor([str(plugin_dir)], DEFAULT_LIMITS)
    try:
        path = plugin(plugin_dir, "files", "ulimit -n")
        assert executor.run(spec(path)).output == "1024"
        assert executor.run(spec(path, limits=ResourceLimits(open_files=77))).output == "77"
        pool = executor._spawners
        assert pool is not None and len(pool._spawners) == 2
    finally:
        executor.close()


def test_the_spawner_dying_mid_check_is_reported_leaves_nothing_and_is_replaced(
    plugin_dir: Path,
) -> None:
    executor = Executor([str(plugin_dir)], DEFAULT_LIMITS)
    try:
        pid_file = plugin_dir / "pid"
        path = plugin(plugin_dir, "hang", f"echo $$ > {pid_file}\nexec sleep 30")
        results: list[CheckResult] = []
        worker = threading.Thread(target=lambda: results.append(executor.run(spec(path))))
        worker.start()
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
        spawner = only_spawner(executor)
        plugin_pid = int(pid_file.read_text())
        os.kill(spawner.pid, signal.SIGKILL)
        worker.join(10)
        assert not worker.is_alive()
        assert results[0].status == "unknown"
        assert "spawner process exited" in results[0].output
        assert wait_for(lambda: not alive(plugin_pid)), "the plugin outlived its supervision"

        again = executor.run(spec(plugin(plugin_dir, "ok", "echo fine")))
        assert (again.status, again.output) == ("ok", "fine")
        assert only_spawner(executor).pid != spawner.pid
    finally:
        executor.close()


def test_letting_a_spawner_go_kills_what_it_still_runs_and_it_exits(plugin_dir: Path) -> None:
    spawner = Spawner(lambda: None, cpu_budget=0)
    read_fd, write_fd = os.pipe()
    try:
        process = spawner.spawn("/bin/sleep", ["sleep", "30"], {}, write_fd)
    finally:
        os.close(write_fd)
    try:
        assert alive(process.pid)
        spawner.close()
        assert process.reap(10)
        assert process.lost
        assert wait_for(lambda: not alive(process.pid))
        assert wait_for(lambda: not alive(spawner.pid))
    finally:
        os.close(read_fd)


def test_a_spawner_over_its_cpu_budget_retires_and_the_pool_starts_another(
    plugin_dir: Path,
) -> None:
    spawner = Spawner(lambda: None, cpu_budget=1e-9)
    read_fd, write_fd = os.pipe()
    try:
        process = spawner.spawn("/bin/true", ["true"], {}, write_fd)
    finally:
        os.close(write_fd)
    os.close(read_fd)
    assert process.wait_until(time.monotonic() + 10) and process.returncode == 0
    assert wait_for(lambda: spawner.retiring)
    spawner.close()

    pool = SpawnerPool()
    try:
        first = pool.get("key", lambda: None, cpu_seconds=60)
        assert first is not None
        first.retiring = True  # as when its RETIRING notice arrives
        second = pool.get("key", lambda: None, cpu_seconds=60)
        assert second is not None and second is not first
        assert wait_for(lambda: not alive(first.pid)), "an idle retired spawner must exit"
    finally:
        pool.close()


def test_limits_too_small_for_a_spawner_run_the_check_the_slow_way(
    plugin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    executor = Executor(["/usr/lib/nagios/plugins"], DEFAULT_LIMITS)
    try:
        with caplog.at_level(logging.WARNING, logger="agent.spawner"):
            result = executor.run(spec("check_dummy", "0", "small",
                                       limits=ResourceLimits(memory_mb=8)))
        assert (result.status, result.output) == ("ok", "OK: small")
        assert "started by the agent itself" in caplog.text
        pool = executor._spawners
        assert pool is not None and not pool._spawners
    finally:
        executor.close()


def test_exit_codes_and_signals_come_back_through_the_spawner(plugin_dir: Path) -> None:
    executor = Executor([str(plugin_dir)], DEFAULT_LIMITS)
    try:
        warn = executor.run(spec(plugin(plugin_dir, "warn", "echo 'WARN | x=1'; exit 1")))
        assert (warn.status, warn.exit_code, warn.perfdata[0]["label"]) == ("warning", 1, "x")
        killed = executor.run(spec(plugin(plugin_dir, "die", "kill -TERM $$")))
        assert (killed.status, killed.output) == (
            "unknown", "UNKNOWN: check was killed by signal SIGTERM")
    finally:
        executor.close()


def test_nothing_of_the_agent_reaches_a_plugin_through_the_spawner(plugin_dir: Path) -> None:
    executor = Executor([str(plugin_dir)], DEFAULT_LIMITS)
    try:
        listing = executor.run(spec(plugin(plugin_dir, "fds", "ls -l /proc/$$/fd")))
        targets = dict(line.split()[-3::2] for line in listing.output.splitlines()
                       if " -> " in line)
        # stdin, stdout and stderr (the output pipe twice), and the shell's script.
        assert targets.pop("0") == "/dev/null"
        assert targets.pop("1").startswith("pipe:") and targets.pop("2").startswith("pipe:")
        assert all(t.endswith("/fds") for t in targets.values()), targets
        cwd = executor.run(spec(plugin(plugin_dir, "cwd", "pwd")))
        assert cwd.output == "/"
    finally:
        executor.close()


def test_a_plugin_starts_with_no_signal_ignored(plugin_dir: Path) -> None:
    # Python ignores SIGPIPE and SIGXFSZ; a plugin must not inherit that from the spawner.
    executor = Executor([str(plugin_dir)], DEFAULT_LIMITS)
    try:
        result = executor.run(spec(plugin(plugin_dir, "sigs", "grep SigIgn /proc/$$/status")))
        ignored = int(result.output.split()[1], 16)
        glibc_reserved = 1 << 31 | 1 << 32  # signals 32 and 33 (posix_spawn's doing)
        assert ignored & ~glibc_reserved == 0, result.output
    finally:
        executor.close()
