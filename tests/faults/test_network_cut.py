"""The network path between agent and server fails, three ways in a row: first only the
replies are lost (the server takes batches the agent never hears about), then nothing
gets through at all (a black hole: requests time out), then every connection is reset
(a firewall that rejects, or a host whose server is gone)."""

from __future__ import annotations

import pytest

from tests.faults.harness import FaultSystem, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# Longer than the agent's request timeout (5 s in the test config), so requests time out.
REPLIES_LOST_S = 7.0
CUT_S = 6.0
REFUSED_S = 5.0


def test_lost_replies_a_dead_path_and_resets_neither_lose_nor_double_results(
    system: FaultSystem,
) -> None:
    system.start_checks()
    stored_at_start = len(system.stored_outputs())
    depths: list[int] = []

    def sample() -> None:
        depths.append(system.spool_depth() or 0)

    system.proxy.drop_replies()
    system.watch(REPLIES_LOST_S, sample)
    # The server stored batches whose 202 never reached the agent: it still holds them.
    stored_unacknowledged = len(system.stored_outputs()) - stored_at_start
    held_by_agent = system.spool_depth() or 0

    system.proxy.cut()
    system.watch(CUT_S, sample)

    system.proxy.refuse()
    system.watch(REFUSED_S, sample)
    # The agent's loops back off after so many failures: wait for one to try again.
    wait_for(lambda: system.proxy.counters.refused > 0, 60, "a connection to be refused")
    system.proxy.restore()
    counters = system.proxy.counters
    system.figures.update(
        stored_while_replies_lost=stored_unacknowledged, spool_when_cut=held_by_agent,
        max_spool_depth=max(depths), bytes_swallowed=counters.dropped_down + counters.dropped_up,
        connections_refused=counters.refused)
    system.figures["drained_after_s"] = round(system.wait_until_drained(), 1)

    accounting = system.account()
    system.assert_exact(accounting)
    assert stored_unacknowledged > 0 and held_by_agent > 0, system.figures
    assert counters.dropped_down > 0 and counters.dropped_up > 0, counters
    outage_s = REPLIES_LOST_S + CUT_S + REFUSED_S
    assert max(depths) >= outage_s * 0.5, system.figures
