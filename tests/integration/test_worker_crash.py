"""A worker SIGKILLed in the middle of a large ingest loses no result and doubles none.

Twenty thousand results are accepted while no worker runs, so they pile up in Redis. One
``aami-server worker`` starts storing them and is frozen (SIGSTOP) at a moment when it
holds a claim on batches it has not committed yet, then SIGKILLed, as the OOM killer or a
power cut would. A second worker must finish the job: every result ends up in PostgreSQL
exactly once. The abandoned batches come back after the dead job's claim expires (RQ's
retry of the abandoned job, or the lease on the batches), which takes up to a minute.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
import requests

from server.jobs import backlog
from tests.integration.ingest_helpers import (
    Agent,
    ResultsTable,
    accepted,
    assert_each_exactly_once,
    batches,
    ingest_backlog,
    make_result,
    registered_fleet,
    wait_for_ingest_to_settle,
    wait_until,
)
from tests.integration.live_server import LiveServer
from tests.integration.processes import LiveWorker

pytestmark = pytest.mark.integration

AGENTS = 10
RESULTS_PER_AGENT = 2_000
TOTAL = AGENTS * RESULTS_PER_AGENT
BATCH_SIZE = 100
STORED_BEFORE_KILL = 1_000


@pytest.fixture
def fleet(live_server: LiveServer) -> Iterator[list[Agent]]:
    with registered_fleet(live_server, AGENTS) as agents:
        yield agents


@pytest.fixture
def first_worker(live_server: LiveServer) -> Iterator[LiveWorker]:
    worker = LiveWorker(live_server, index=0)
    yield worker
    worker.close()


@pytest.fixture
def second_worker(live_server: LiveServer) -> Iterator[LiveWorker]:
    worker = LiveWorker(live_server, index=1)
    yield worker
    worker.close()


def post_backlog(fleet: list[Agent]) -> list[str]:
    """Post TOTAL results in batches of 100 (all must be accepted); returns their ids."""
    start = datetime.now(UTC) - timedelta(hours=2)
    ids = []
    with requests.Session() as session:
        for agent in fleet:
            results = [
                make_result("load", "ok" if i % 50 else "warning", start + timedelta(seconds=i))
                for i in range(RESULTS_PER_AGENT)
            ]
            ids += [r["result_id"] for r in results]
            for batch in batches(results, BATCH_SIZE):
                reply = session.post(
                    agent.server.api(f"agents/{agent.agent_id}/check-results"),
                    json={"results": batch},
                    headers=agent.headers,
                    timeout=30,
                )
                accepted(reply, len(batch))
    return ids


def freeze_while_storing(worker: LiveWorker, client: redis.Redis, table: ResultsTable) -> int:
    """SIGSTOP the worker at a moment it holds uncommitted batches (and has stored some
    already); returns how many batches it holds. A worker caught between two claims is
    let go again (SIGCONT) and caught a little later."""
    deadline = time.monotonic() + 120
    pid = worker.pid
    assert pid is not None
    while time.monotonic() < deadline:
        if table.count() >= STORED_BEFORE_KILL:
            os.kill(pid, signal.SIGSTOP)
            _, storing = backlog.size(client)
            if storing:
                return storing
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"the worker never held a claim; stored {table.count()} of {TOTAL}")


def test_worker_killed_mid_ingest_loses_and_doubles_nothing(
    live_server: LiveServer,
    fleet: list[Agent],
    first_worker: LiveWorker,
    second_worker: LiveWorker,
) -> None:
    table = ResultsTable(live_server.database_url)
    ids = post_backlog(fleet)
    assert table.count() == 0  # accepted, and waiting in Redis for a worker
    assert ingest_backlog(live_server) == TOTAL // BATCH_SIZE

    with contextlib.closing(redis.Redis.from_url(live_server.redis_url)) as client:
        first_worker.start()
        abandoned = freeze_while_storing(first_worker, client, table)
        first_worker.kill()

        stored_by_the_dead = table.count()
        assert STORED_BEFORE_KILL <= stored_by_the_dead < TOTAL, stored_by_the_dead
        assert abandoned > 0 and backlog.size(client)[1] == abandoned  # its claim outlives it

    second_worker.start()
    wait_until(lambda: table.count() >= TOTAL, timeout=180,
               what=f"all {TOTAL} results after the crash")
    # The dead worker may have committed its claim without getting to drop it: then every
    # row is in, and the claim is let go only when its lease runs out (or RQ's retry of
    # the dead job, which waits for the dead worker's scheduler lock, runs first).
    wait_for_ingest_to_settle(live_server, timeout=backlog.LEASE_S + 30)

    assert_each_exactly_once(table, ids)
    assert second_worker.running
