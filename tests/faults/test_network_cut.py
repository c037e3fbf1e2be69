"""The network path between agent and server fails: first only the replies are lost (the
server takes batches the agent never hears about), then nothing gets through at all."""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import FaultSystem

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# Longer than the agent's request timeout (5 s in the test config), so requests time out.
REPLIES_LOST_S = 7.0
CUT_S = 6.0


def test_lost_replies_and_a_dead_path_neither_lose_nor_double_results(
    system: FaultSystem,
) -> None:
    system.start_checks()
    stored_at_start = len(system.stored_outputs())

    system.proxy.drop_replies()
    depths: list[int] = []
    system.watch(REPLIES_LOST_S, lambda: depths.append(system.spool_depth() or 0))
    # The server stored batches whose 202 never reached the agent: it still holds them.
    stored_unacknowledged = len(system.stored_outputs()) - stored_at_start
    held_by_agent = system.spool_depth() or 0

    system.proxy.cut()
    system.watch(CUT_S, lambda: depths.append(system.spool_depth() or 0))
    system.proxy.restore()
    restored_at = time.monotonic()
    system.figures.update(
        stored_while_replies_lost=stored_unacknowledged, spool_when_cut=held_by_agent,
        max_spool_depth=max(depths), bytes_swallowed=system.proxy.counters.dropped_down
        + system.proxy.counters.dropped_up)
    system.wait_until_drained()
    system.figures["drained_after_s"] = round(time.monotonic() - restored_at, 1)

    accounting = system.account()
    system.assert_exact(accounting)
    assert stored_unacknowledged > 0 and held_by_agent > 0, system.figures
    assert system.proxy.counters.dropped_down > 0 and system.proxy.counters.dropped_up > 0
    assert max(depths) >= (REPLIES_LOST_S + CUT_S) * 0.5, system.figures
