"""agent/status.py: the status board and how `aami-agent status` shows it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.model import CheckResult
from agent.status import StatusBoard, format_table, pid_running, read_status, render


def result(check_id: str, status: str, output: str) -> CheckResult:
    return CheckResult(result_id="r", check_id=check_id, status=status, exit_code=0,
                       output=output, perfdata=[], duration_ms=12,
                       executed_at="2026-11-22T10:30:00.123Z")


def test_snapshot_has_the_agent_facts_and_each_checks_last_result() -> None:
    board = StatusBoard(agent_id="a1", server="https://s", version="0.1.0")
    board.record_result(result("disk", "warning", "DISK WARNING - 85%\nlong output"))
    board.connected(last_heartbeat_at="2026-11-22T10:30:01.000Z")

    data = board.snapshot(next_due={"disk": "2026-11-22T10:31:00.000Z", "load": None},
                          spool_depth=2, dropped_results=1)

    assert data["agent_id"] == "a1" and data["pid"] == os.getpid()
    assert data["connected"] is True and data["spool_depth"] == 2
    assert data["checks"]["disk"]["output"] == "DISK WARNING - 85%"
    assert data["checks"]["disk"]["next_due"] == "2026-11-22T10:31:00.000Z"
    assert data["checks"]["load"]["status"] is None  # assigned, not run yet


def test_failure_keeps_the_last_error() -> None:
    board = StatusBoard(agent_id="a1", server="s", version="v")
    board.connected()
    board.failed("connection refused")
    data = board.snapshot()
    assert data["connected"] is False and data["last_error"] == "connection refused"


def test_render_running_and_not_running() -> None:
    board = StatusBoard(agent_id="a1", server="https://s", version="v")
    board.record_result(result("disk", "ok", "DISK OK"))
    data = board.snapshot()

    assert "running (pid" in render(data, running=True)
    shown = render(data, running=False)
    assert "NOT RUNNING" in shown and "DISK OK" in shown and "CHECK" in shown


def test_render_says_how_check_policies_are_verified() -> None:
    board = StatusBoard(agent_id="a1", server="http://s", version="v")
    assert "check policies: unknown" in render(board.snapshot(), running=True)
    board.update(policy_trust="NOT VERIFIED: unsigned and unverified policies run")
    assert ("check policies: NOT VERIFIED: unsigned and unverified policies run"
            in render(board.snapshot(), running=True).splitlines())


def test_read_status_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert read_status(tmp_path / "status.json") is None


def test_pid_running() -> None:
    assert pid_running(os.getpid())
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    assert not pid_running(int(proc.stdout))
    assert not pid_running(None) and not pid_running(-1) and not pid_running(True)


def test_format_table_aligns_columns() -> None:
    table = format_table(["A", "BB"], [["long value", "x"], ["y", "z"]])
    assert table.splitlines() == ["A           BB", "long value  x", "y           z"]
