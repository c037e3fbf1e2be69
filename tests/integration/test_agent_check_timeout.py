"""A hung check is killed with its whole process tree and reported critical, on time.

The plugins are scripts in a directory of the agent's allowed paths. Each starts a
grandchild that would sleep for a day, carrying a marker argument that no other process
has, so /proc can tell whether anything of the tree survived. One plugin exits at once
and leaves its grandchild holding the output pipe (and ignoring SIGTERM, so only the
SIGKILL after the grace period ends it); the other waits for its grandchild.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.scheduler import splay_offset
from tests.integration.agent_system import AgentSystem, parse_time, running_system
from tests.integration.live_server import LiveServer, alive
from tests.integration.processes import processes_with_arg, wait_until

pytestmark = pytest.mark.integration

TIMEOUT_S = 2
INTERVAL_S = 600
# A grandchild that sleeps for a day, ignoring SIGTERM; argv[1] is the marker.
SLEEPER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(86400)"
#: The test is over well within this; a check's own first run must not come before.
QUIET_SECONDS = 40.0


def forced_only_check_id(agent_id: str, name: str) -> str:
    """A check id whose first scheduled run, splayed by the agent, is QUIET_SECONDS away.

    Only the forced runs may start during the test: a scheduled run starting while the
    test looks for leftovers would leave a live grandchild behind for a good reason.
    """
    for attempt in range(1000):
        check_id = f"{name}-{attempt}"
        if splay_offset(agent_id, check_id, INTERVAL_S) >= QUIET_SECONDS:
            return check_id
    raise AssertionError("no check id with a late enough splay")


@pytest.fixture
def system(live_server: LiveServer, tmp_path: Path) -> Iterator[AgentSystem]:
    with running_system(live_server, tmp_path) as running:
        yield running


def test_hung_check_is_killed_with_its_grandchildren_and_reported_critical_in_time(
    system: AgentSystem, record_property: Callable[[str, object], None]
) -> None:
    marker = f"aami-hang-{uuid.uuid4().hex}"
    runs = system.shared_file("runs.txt")  # "plugin-pid grandchild-pid" per run
    orphan, waiter = (forced_only_check_id(system.agent_id, name)
                      for name in ("orphan-holds-stdout", "waits-for-grandchild"))
    plugins = {
        orphan: system.write_plugin("orphan_holds_stdout", f"""
echo "plugin $$ started its grandchild"
python3 -c '{SLEEPER}' {marker} &
echo "$$ $!" >> {runs}
exit 0
"""),
        waiter: system.write_plugin("waits_for_grandchild", f"""
echo "plugin $$ waiting for its grandchild"
python3 -c '{SLEEPER}' {marker} &
echo "$$ $!" >> {runs}
wait
"""),
    }
    for check_id, path in plugins.items():
        # Each runs once, when forced: its own first run comes after the test is over.
        system.add_check(check_id, [path], interval=f"{INTERVAL_S}s",
                         timeout=f"{TIMEOUT_S}s")
    system.agent.wait_for_status(lambda s: set(plugins) <= set(s.get("checks", {})), 10,
                                 "both hanging checks scheduled")
    forced_at = time.time()
    for check_id in plugins:
        system.admin.force_check(system.agent_id, check_id)

    results = {}
    seen_at = {}
    for check_id in plugins:
        results[check_id] = system.wait_for_results(check_id, timeout=20)[-1]
        seen_at[check_id] = time.time()

    timings = {}
    for check_id, result in results.items():
        assert (result["status"], result["exit_code"]) == ("critical", 2), result
        lines = result["output"].splitlines()
        assert lines[0] == f"CRITICAL: check timed out after {TIMEOUT_S}s", result["output"]
        assert "started its grandchild" in result["output"] or "waiting" in result["output"]
        # Killed on time: SIGTERM at the timeout, SIGKILL half a second later at most.
        assert TIMEOUT_S * 1000 <= result["duration_ms"] <= (TIMEOUT_S + 1) * 1000, result
        started = parse_time(result["executed_at"])
        # Forcing works while the agent is parked in its long-poll: the reply hands over
        # the command (the next heartbeat may be up to 30 s away).
        assert started - forced_at < 1.5, (started - forced_at, system.logs())
        finished = started + result["duration_ms"] / 1000
        timings[check_id] = {
            "duration_ms": result["duration_ms"],
            "visible_on_server_after_start_s": round(seen_at[check_id] - started, 3),
        }
        assert finished <= started + TIMEOUT_S + 1
        # Delivery adds the agent's flush interval and the worker's ingestion on top.
        assert seen_at[check_id] - started < TIMEOUT_S + 1 + 3, timings

    # Nothing of either tree is left: not the plugins, not the grandchildren.
    recorded = [int(pid) for line in runs.read_text().split("\n") if line
                for pid in line.split()]
    assert len(recorded) >= 4, runs.read_text()
    survivors = processes_with_arg(marker)
    assert survivors == [], f"processes of the killed checks still run: {survivors}"
    assert [pid for pid in recorded if alive(pid)] == []

    # The agent itself carries on: it is the same process, and still running checks.
    pid = system.agent.pid
    system.add_check("after", ["/usr/lib/nagios/plugins/check_dummy", "0", "still here"],
                     interval="1s", timeout="1s")
    system.wait_for_results("after", output="OK: still here", timeout=10)
    assert system.agent.pid == pid
    wait_until(lambda: not processes_with_arg(marker), 1, "no marked process")
    record_property("timeouts", timings)
    print("hung checks:", timings)
