"""SIGKILL of Redis (append-only file, fsync every second), restarted a few seconds later.

Accepted batches wait in Redis until a worker stores them. Redis write()s its AOF before it
answers, so a killed Redis *process* keeps every batch it acknowledged (the kernel has
them); only an fsync stall (Redis then postpones the write, up to 2 s) or a crash of the
whole host can lose acknowledged writes with ``appendfsync everysec``. BENCHMARKS.md
("Faults") has the measurements and the trade-off of ``appendfsync always``.
"""

from __future__ import annotations

import pytest

from server.jobs.backlog import PENDING_KEY
from tests.faults.harness import FaultSystem, redis_client_for, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DOWN_S = 4.0


def test_results_accepted_before_redis_was_killed_are_not_lost(system: FaultSystem) -> None:
    system.start_checks()
    queue = redis_client_for(system.server.redis_url)
    # Let accepted batches pile up in Redis unstored, so that the kill hits some.
    system.worker.stop()
    wait_for(lambda: queue.llen(PENDING_KEY) >= 3, 30, "batches waiting in Redis")
    # Acknowledged batches only accumulate until the kill: at least this many must survive.
    waiting = system.figures["batches_waiting_at_kill"] = queue.llen(PENDING_KEY)
    system.redis_server.kill()
    depths: list[int] = []
    system.watch(DOWN_S, lambda: depths.append(system.spool_depth() or 0))
    system.redis_server.start()
    assert queue.llen(PENDING_KEY) >= waiting, "accepted batches vanished with Redis"
    queue.close()
    system.worker.start()
    system.figures["max_spool_depth"] = max(depths)
    system.figures["drained_after_s"] = round(system.wait_until_drained(), 1)

    accounting = system.account()
    system.assert_exact(accounting)
    log = system.server_log()
    # While Redis was away the API said so with 503 (and the agent kept its results).
    assert '"redis unavailable"' in log, system.server.log_tail()
    assert max(depths) >= 2, system.figures
