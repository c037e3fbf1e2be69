"""The disk under the agent's spool fills up.

The agent's state directory is a small tmpfs of the test's own (tests/faults/disk.py).
Two ways a disk gets full:

* something else takes all of it (down to ENOSPC), and an operator frees it later;
* while the server is away, something else keeps taking whatever the spool gives back,
  so the spool fills what is left, and nobody frees anything; the agent restarts
  meanwhile. Once the server is back, the agent must make room again by itself, on a
  disk that stays full. (The spool keeps
  ``agent.spool.MIN_FREE_BYTES`` free for that; a spool that filled its disk to the last
  byte could neither remove what the server acknowledged nor store anything new.)

Either way a result that cannot be spooled is dropped and counted (never an exception that
stops the checks), the count reaches the server in heartbeats, the agent recovers, and in
the end every run is stored exactly once or is among those the agent counted as dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.spool import MIN_FREE_BYTES
from tests.faults.disk import SmallDisk, small_disk
from tests.faults.harness import CHECK_IDS, FaultSystem, fault_system, wait_for
from tests.support import services
from tests.support.services import PostgresServer, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DISK_BYTES = 16 * 1024 * 1024
FULL_S = 6.0
# What the filler leaves: two pages above the spool's reserve.
ROOM = MIN_FREE_BYTES + 8 * 1024
DROPPED_MARK = "cannot store results"


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
    # Only runs of the full spell: at most one per check may straddle each of its ends.
    assert accounting.dropped_by_agent <= runs_while_full + len(CHECK_IDS), accounting.summary()
    assert "disk full" in system.agent.log_text()


def test_a_spool_that_filled_its_disk_makes_room_itself_once_the_server_is_back(
    system: FaultSystem, disk: SmallDisk
) -> None:
    system.start_checks()
    system.proxy.refuse()  # the server is out of reach
    cut_at = time.monotonic()

    def keep_full() -> bool:
        disk.fill(leave=ROOM)  # takes what the spool's checkpoints give back
        return DROPPED_MARK in system.agent.log_text()

    # The spool grows into what is left until results no longer fit, and are dropped.
    wait_for(keep_full, 90, "the spool to fill the disk and drop results", interval=0.25)
    system.figures["full_after_s"] = round(time.monotonic() - cut_at, 1)
    system.watch(FULL_S, keep_full)
    assert system.agent.running, system.agent.log_text()[-3000:]

    # A restart on the full disk: the spooled results and the drop count survive it.
    system.agent.stop()
    assert system.agent.exit_code == 0, system.agent.log_text()[-3000:]
    stopped = system.agent.status()
    held = system.figures["spool_depth_when_full"] = stopped["spool_depth"]
    system.figures["dropped_at_restart"] = stopped["dropped_results"]
    system.agent.start()
    system.agent.wait_for_status(
        lambda s: s.get("spool_depth") == held
        and s.get("dropped_results", -1) >= stopped["dropped_results"],
        30, "the spool and the drop count of before the restart")
    system.watch(FULL_S / 2, keep_full)
    system.figures["free_bytes_when_full"] = disk.free_bytes()

    # The network heals; the disk stays as full as it is. Delivered results make room.
    system.proxy.restore()
    healed_at = time.monotonic()
    system.wait_until_drained()
    drained_at = time.monotonic()
    # Once the server has taken the spooled results, new ones find room again.
    dropped_at_drain = _dropped_in_log(system)
    stored_at_drain = len(system.stored_outputs())
    wait_for(lambda: len(system.stored_outputs()) >= stored_at_drain + 3 * len(CHECK_IDS), 60,
             "results made after the drain, spooled and delivered", interval=0.5)
    assert _dropped_in_log(system) == dropped_at_drain, system.agent.log_text()[-3000:]
    system.figures.update(
        drained_after_s=round(drained_at - healed_at, 1),
        dropped_reported=wait_for(reported_dropped(system), 30, "a dropped count in heartbeats"),
        free_bytes_at_end=disk.free_bytes())

    accounting = system.account()
    system.assert_exact(accounting, dropped="counted")
    assert accounting.dropped_by_agent > stopped["dropped_results"] > 0, accounting.summary()
    assert held > 0, accounting.summary()


def _dropped_in_log(system: FaultSystem) -> int:
    return system.agent.log_text().count(DROPPED_MARK)
