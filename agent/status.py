"""What a running agent reports about itself in ``state_dir/status.json``.

The loops record what happens on a :class:`StatusBoard`; a small loop of the agent
writes the board to disk every few seconds and soon after each change. ``aami-agent
status`` reads the file back with :func:`read_status` and prints :func:`render`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.containment import describe as describe_containment
from agent.executor import iso_utc
from agent.model import CheckResult


class StatusBoard:
    """Thread-safe record of the agent's state; ``changed`` is set on every update."""

    def __init__(self, *, agent_id: str, server: str, version: str,
                 pid: int | None = None, started_at: float | None = None) -> None:
        self._lock = threading.Lock()
        self.changed = threading.Event()
        self._state: dict[str, Any] = {
            "agent_id": agent_id,
            "server": server,
            "version": version,
            "pid": os.getpid() if pid is None else pid,
            "started_at": iso_utc(time.time() if started_at is None else started_at),
            "state": "starting",
            "connected": False,
            "last_heartbeat_at": None,
            "last_error": None,
            "last_error_at": None,
            "config_version": None,
        }
        self._checks: dict[str, dict[str, Any]] = {}

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._state.update(fields)
        self.changed.set()

    def show_containment(self, executor: object) -> None:
        """Record the exec containment ``executor`` applies (agent/containment.py); an
        executor without one (a test's fake) records nothing."""
        containment = getattr(executor, "containment", None)
        if containment is not None:
            self.update(exec_containment=containment.summary())

    def connected(self, **fields: Any) -> None:
        """A call to the server succeeded."""
        self.update(connected=True, **fields)

    def failed(self, error: object) -> None:
        """A call to the server failed; keeps the last error for the operator."""
        self.update(connected=False, last_error=str(error), last_error_at=iso_utc(time.time()))

    def record_result(self, result: CheckResult) -> None:
        lines = result.output.strip().splitlines()
        with self._lock:
            self._checks[result.check_id] = {
                "status": result.status,
                "exit_code": result.exit_code,
                "output": lines[0][:200] if lines else "",
                "executed_at": result.executed_at,
                "duration_ms": result.duration_ms,
            }
        self.changed.set()

    def forget_checks_except(self, check_ids: set[str]) -> None:
        """Drop the last results of checks that are no longer assigned."""
        with self._lock:
            for check_id in set(self._checks) - check_ids:
                del self._checks[check_id]
        self.changed.set()

    def snapshot(self, next_due: Mapping[str, str | None] | None = None,
                 **extra: Any) -> dict[str, Any]:
        """The whole state as JSON-ready data; ``next_due`` maps check id to a timestamp."""
        with self._lock:
            data = dict(self._state)
            checks = {cid: dict(info) for cid, info in self._checks.items()}
        for check_id, due in (next_due or {}).items():
            checks.setdefault(check_id, {"status": None, "output": "", "executed_at": None})
            checks[check_id]["next_due"] = due
        data.update(extra)
        data["checks"] = dict(sorted(checks.items()))
        data["updated_at"] = iso_utc(time.time())
        return data


def read_status(path: Path) -> dict[str, Any] | None:
    """The status file's content; None if there is none. ValueError if it is damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a status object")
    return data


def pid_running(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it just belongs to someone else
    return True


def render(status: Mapping[str, Any], *, running: bool) -> str:
    """The status as a few aligned lines and a table of checks, for people."""
    pid = status.get("pid")
    if running:
        head = f"agent:          running (pid {pid}, since {status.get('started_at')})"
    else:
        head = (f"agent:          NOT RUNNING (pid {pid} is gone); "
                f"last status written {status.get('updated_at')}")
    connection = "connected" if status.get("connected") else "not connected"
    lines = [
        head,
        f"agent id:       {status.get('agent_id')}",
        f"server:         {status.get('server')} ({connection})",
        f"last heartbeat: {status.get('last_heartbeat_at') or 'never'}",
    ]
    if status.get("last_error"):
        lines.append(f"last error:     {status.get('last_error_at')}: {status['last_error']}")
    containment = status.get("exec_containment")
    lines += [
        "exec containment: " + (describe_containment(containment)
                                if isinstance(containment, Mapping) else "not reported"),
        f"config version: {status.get('config_version') or 'none'}",
        f"check policies: {status.get('policy_trust') or 'unknown'}",
        f"spool:          {status.get('spool_depth', 0)} result(s) waiting, "
        f"{status.get('dropped_results', 0)} dropped",
        "",
    ]
    checks: Mapping[str, Mapping[str, Any]] = status.get("checks") or {}
    if not checks:
        lines.append("no checks assigned")
        return "\n".join(lines)
    rows = [
        [cid, str(info.get("status") or "-"), str(info.get("executed_at") or "-"),
         str(info.get("next_due") or "-"), str(info.get("output") or "")]
        for cid, info in checks.items()
    ]
    lines.append(format_table(["CHECK", "STATUS", "LAST RUN", "NEXT DUE", "OUTPUT"], rows))
    return "\n".join(lines)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    out = []
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        out.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(out)
