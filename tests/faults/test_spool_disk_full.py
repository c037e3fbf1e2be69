"""The disk under the agent's spool fills up, and is freed again.

The agent's state directory is a small tmpfs of the test's own (tests/faults/disk.py).
While it is full, a result that cannot be spooled is dropped and counted (never an
exception that stops the checks), the count reaches the server in heartbeats, and once
there is room again the agent spools and delivers as before. In the end every run is
stored exactly once or is among those the agent counted as dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.disk import SmallDisk, small_disk
from tests.faults.harness import FaultSystem, fault_system, wait_for
from tests.support import services
from tests.support.services import PostgresServer, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DISK_BYTES = 8 * 1024 * 1024
FULL_S = 6.0


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with services.required(), small_disk(tmp_path / "agent" / "state", DISK_BYTES) as mounted:
        yield mounted


@pytest.fixture
def system(  # the suite's system, with the agent's state on the small disk
    tmp_path: Path, redis_server: RedisServer, postgres: PostgresServer, database_url: str,
    disk: SmallDisk,
) -> Iterator[FaultSystem]:
    with fault_system(tmp_path, redis_server=redis_server, postgres=postgres,
                      database_url=database_url) as running:
        yield running


def reported_dropped(system: FaultSystem) -> Callable[[], Any]:
    """The agent's dropped count as its heartbeats told the server."""
    def probe() -> Any:
        return system.admin.target(system.agent_id).get("facts", {}).get("dropped_results")
    return probe


def test_a_full_disk_drops_and_counts_results_then_the_agent_recovers(
    system: FaultSystem, disk: SmallDisk
) -> None:
    system.start_checks()
    runs_before = len(system.ledger())

    system.figures["filler_bytes"] = disk.fill()
    assert disk.free_bytes() == 0
    full_at = time.monotonic()
    # Heartbeats carry the count: the agent noticed, and kept running.
    dropped_seen = wait_for(reported_dropped(system), 30, "the agent to report dropped results")
    remaining = FULL_S - (time.monotonic() - full_at)
    if remaining > 0:
        time.sleep(remaining)
    assert system.agent.running, system.agent.log_text()[-3000:]
    runs_while_full = len(system.ledger()) - runs_before
    disk.free()
    freed_at = time.monotonic()
    stored_at_free = len(system.stored_outputs())

    system.wait_until_drained()
    # Results made after the disk was freed are spooled and delivered again.
    wait_for(lambda: len(system.stored_outputs()) >= stored_at_free + 3, 30,
             "results spooled after the disk was freed")
    system.figures.update(dropped_reported=dropped_seen, runs_while_full=runs_while_full,
                          recovered_after_s=round(time.monotonic() - freed_at, 1))

    accounting = system.account()
    system.assert_exact(accounting, dropped="counted")
    assert accounting.dropped_by_agent >= dropped_seen > 0, accounting.summary()
    assert accounting.dropped_by_agent <= runs_while_full + 2, accounting.summary()
    assert "disk full" in system.agent.log_text()
