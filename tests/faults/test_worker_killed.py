"""SIGKILL of the ingest worker while it holds claimed batches it has not committed."""

from __future__ import annotations

import time

import psycopg
import pytest

from server.jobs.backlog import CLAIMS_KEY, PENDING_KEY
from tests.faults.harness import FaultSystem, redis_client_for, wait_for
from tests.support.services import libpq_url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DOWN_S = 4.0


def test_batches_claimed_by_a_killed_worker_are_stored_exactly_once(system: FaultSystem) -> None:
    system.start_checks()
    queue = redis_client_for(system.server.redis_url)
    # Hold the results table so that the next drain job blocks inside its INSERT, with
    # its batches claimed: the worker is then killed at the worst moment, not by luck.
    with psycopg.connect(libpq_url(system.server.database_url)) as blocker:
        blocker.execute("LOCK TABLE check_results IN EXCLUSIVE MODE")
        wait_for(lambda: queue.zcard(CLAIMS_KEY) > 0, 30, "a drain job holding a claim")
        claimed_at = time.monotonic()
        system.worker.kill()
        blocker.rollback()
    stored_before = len(system.stored_outputs())
    time.sleep(DOWN_S)
    # Nothing stores results while the worker is gone; they wait in Redis.
    assert len(system.stored_outputs()) == stored_before
    assert queue.llen(PENDING_KEY) > 0
    system.worker.start()

    # The dead job's claim comes back (RQ retries the abandoned job, or its lease expires)
    # while new batches flow past it.
    wait_for(lambda: queue.zcard(CLAIMS_KEY) == 0 and queue.llen(PENDING_KEY) == 0, 120,
             "the abandoned claim to be stored", interval=0.5)
    system.figures["claim_recovered_after_s"] = round(time.monotonic() - claimed_at, 1)
    system.wait_until_drained()
    accounting = system.account()
    system.assert_exact(accounting)
    queue.close()
