"""SIGKILL of PostgreSQL (every process of the cluster), restarted a few seconds later."""

from __future__ import annotations

import time

import pytest

from server.jobs.backlog import PENDING_KEY
from tests.faults.harness import FaultSystem, queued_batches, redis_client_for, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DOWN_S = 5.0


def test_results_made_while_postgres_was_killed_arrive_exactly_once(
    system: FaultSystem,
) -> None:
    system.start_checks()
    queue = redis_client_for(system.server.redis_url)
    # Accepted batches wait in Redis, so that the worker meets the dead database too.
    system.worker.stop()
    wait_for(lambda: queue.llen(PENDING_KEY) >= 3, 30, "batches waiting in Redis")
    system.postgres.kill()
    system.worker.start()
    killed_at = time.monotonic()
    depths: list[int] = []
    waiting: list[int] = []

    def sample() -> None:
        depths.append(system.spool_depth() or 0)
        waiting.append(queued_batches(queue))

    system.watch(DOWN_S, sample)
    system.postgres.start()
    system.figures["restart_s"] = round(time.monotonic() - killed_at - DOWN_S, 2)
    system.figures["max_spool_depth"] = max(depths)
    system.figures["max_batches_waiting_in_redis"] = max(waiting)
    system.figures["drained_after_s"] = round(system.wait_until_drained(), 1)

    accounting = system.account()
    system.assert_exact(accounting)
    queue.close()
    # The API needs the database to accept a batch (it checks the assignment): results
    # waited in the agent's spool, and the API said 503, never 500. The worker failed
    # to store the batches it had taken, and stored them once the database was back.
    assert max(depths) >= 2, system.figures
    assert max(waiting) >= 3, system.figures
    assert '"database unavailable"' in system.server_log(), system.server.log_tail()
    assert "OperationalError" in system.worker.log_text()
