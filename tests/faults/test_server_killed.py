"""SIGKILL of the whole API (gunicorn master and workers), restarted a few seconds later."""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import FaultSystem

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DOWN_S = 5.0


def test_results_made_while_the_api_was_killed_arrive_exactly_once(system: FaultSystem) -> None:
    system.start_checks()
    depths: list[int] = []

    system.server.kill()
    killed_at = time.monotonic()
    system.watch(DOWN_S, lambda: depths.append(system.spool_depth() or 0))
    system.server.start()
    system.figures["restart_s"] = round(time.monotonic() - killed_at - DOWN_S, 2)
    system.figures["max_spool_depth"] = max(depths)
    system.figures["drained_after_s"] = round(system.wait_until_drained(), 1)

    accounting = system.account()
    system.assert_exact(accounting)
    # The outage was real: results piled up in the agent's spool while the API was gone.
    assert max(depths) >= DOWN_S * 0.5, system.figures
    assert system.proxy.counters.refused_upstream > 0, system.proxy.counters
