"""The fleet simulator end to end, small: it is a benchmark, but its accounting is a claim.

``python -m bench.fleet_sim`` is run as an operator runs it (its own PostgreSQL, Redis,
API and workers), with a tiny fleet and short intervals, a server restart under the fleet
and the bare-Flask ceiling. What must hold whatever the machine's speed: every agent
registers and comes back after the restart, every result it made is stored exactly once,
and the report carries the figures BENCHMARKS.md quotes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENTS = 12

pytestmark = pytest.mark.integration


def test_a_small_fleet_run_accounts_for_every_result(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.fleet_sim", "--agents", str(AGENTS),
         "--steps", f"{AGENTS // 2},{AGENTS}", "--window", "4", "--warmup", "2",
         "--heartbeat-interval", "2", "--results-interval", "2", "--poll-wait", "2",
         "--restart-server", "kill",
         "--json", str(report_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=420,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())

    accounting = report["aami"]["accounting"]
    assert accounting["results_made"] > 0
    assert accounting["ingest_settled"], accounting
    assert accounting["stored"] == accounting["results_made"], accounting
    assert accounting["lost"] == 0 and accounting["unexpected_rows"] == 0, accounting

    steps = report["aami"]["steps"]
    assert [step["agents"] for step in steps] == [AGENTS // 2, AGENTS]
    for step in steps:
        assert step["window"]["server_errors_5xx"] == 0, step["window"]
        assert step["window"]["kinds"]["heartbeat"]["requests"] > 0, step["window"]

    restart = report["aami"]["restart"]
    assert restart["mode"] == "kill"
    assert restart["agents_back"] == AGENTS, restart
    assert restart["window"]["server_errors_5xx"] == 0, restart

    # The same mix against the bare app, and the table that puts them side by side.
    ceiling_steps = report["ceiling"]["steps"]
    assert [step["agents"] for step in ceiling_steps] == [AGENTS // 2, AGENTS]
    assert ceiling_steps[-1]["window"]["kinds"]["heartbeat"]["requests"] > 0
    assert "AAMI server vs bare Flask" in run.stdout
