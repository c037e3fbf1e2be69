"""Redis restarted under a stream of results: no accepted result is lost or doubled.

Redis runs with the persistence the README tells production to use (``appendonly yes``,
``appendfsync everysec``). A client thread posts batches the way an agent does: only a
202 counts as accepted, anything else is retried with the same batch. Redis is stopped
cleanly and started again on the same port and data directory while the stream runs.
While it is down the API must answer 503 with ``Retry-After`` (a 500 would be a bug), the
workers must ride it out, and afterwards every accepted result must be in PostgreSQL
exactly once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from tests.integration.ingest_helpers import (
    Agent,
    ResultsTable,
    admin_headers,
    assert_each_exactly_once,
    bootstrap_token,
    create_check,
    make_result,
    register_agents,
    running,
    wait_for_ingest_to_settle,
    wait_until,
)
from tests.integration.live_server import LiveServer
from tests.integration.processes import LiveWorker
from tests.support.services import RedisServer

pytestmark = pytest.mark.integration

RESULTS_PER_BATCH = 10
BATCHES_EACH_SIDE = 25  # accepted before the restart, and again after it
GIVE_UP_ON_A_BATCH_S = 90
OUTAGE_S = 4


@pytest.fixture
def redis_server(make_redis_server: Callable[..., RedisServer]) -> RedisServer:
    return make_redis_server(appendonly=True)


@pytest.fixture
def server(pg_database_url: str, redis_server: RedisServer, tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "server", database_url=pg_database_url,
                      redis_url=redis_server.url)
    with running(live):
        yield live


@pytest.fixture
def workers(server: LiveServer) -> Iterator[list[LiveWorker]]:
    started = [LiveWorker(server, index=n) for n in range(2)]
    with running(*started):
        yield started


class ResultStream(threading.Thread):
    """Posts batches of new results round-robin for ``agents`` until stopped, retrying
    each batch until it gets a 202, and remembers what was accepted and what was seen."""

    def __init__(self, agents: list[Agent]) -> None:
        super().__init__(name="result-stream", daemon=True)
        self.agents = agents
        self.accepted_ids: list[str] = []
        self.accepted_batches = 0
        self.statuses: Counter[int | str] = Counter()
        self.without_retry_after = 0
        self.failure: BaseException | None = None
        self._stop_posting = threading.Event()
        self._next_time = datetime.now(UTC) - timedelta(hours=1)

    def stop(self) -> None:
        self._stop_posting.set()

    def run(self) -> None:
        try:
            n = 0
            while not self._stop_posting.is_set():
                self._deliver(self.agents[n % len(self.agents)], self._batch())
                n += 1
        except BaseException as exc:  # noqa: B036  # re-raised by the test thread
            self.failure = exc

    def _batch(self) -> list[dict[str, str]]:
        batch = []
        for _ in range(RESULTS_PER_BATCH):
            self._next_time += timedelta(milliseconds=100)
            batch.append(make_result("load", "ok", self._next_time))
        return batch

    def _deliver(self, agent: Agent, batch: list[dict[str, str]]) -> None:
        give_up = time.monotonic() + GIVE_UP_ON_A_BATCH_S
        while time.monotonic() < give_up:
            try:
                reply = agent.post_results(batch, timeout=10)
            except requests.RequestException as exc:
                self.statuses[type(exc).__name__] += 1
                time.sleep(0.1)
                continue
            self.statuses[reply.status_code] += 1
            if reply.status_code == 202:
                self.accepted_ids += [r["result_id"] for r in batch]
                self.accepted_batches += 1
                return
            if reply.status_code == 503 and not reply.headers.get("Retry-After"):
                self.without_retry_after += 1
            # An agent would wait Retry-After (5 s); a shorter pause keeps the test quick.
            time.sleep(0.1)
        raise AssertionError(f"a batch was not accepted within {GIVE_UP_ON_A_BATCH_S} s")


def test_accepted_results_survive_a_redis_restart(
    server: LiveServer, workers: list[LiveWorker], redis_server: RedisServer
) -> None:
    table = ResultsTable(server.database_url)
    agents = register_agents(server, bootstrap_token(server), 3)
    create_check(server, admin_headers(server), "load", [a.agent_id for a in agents])
    stream = ResultStream(agents)
    stream.start()
    try:
        wait_until(lambda: stream.accepted_batches >= BATCHES_EACH_SIDE or stream.failure,
                   timeout=60, what="batches accepted before the restart")

        redis_server.stop()  # SIGTERM: Redis writes what it holds to its AOF and exits
        stopped_at = time.monotonic()
        # Down long enough for the workers to fail again while restarting, not just once.
        wait_until(
            lambda: (stream.statuses[503] >= 3 and time.monotonic() - stopped_at > OUTAGE_S)
            or stream.failure,
            timeout=30, what="the API to answer 503 while Redis is down",
        )
        redis_server.start()

        resumed_at = stream.accepted_batches
        wait_until(
            lambda: stream.accepted_batches >= resumed_at + BATCHES_EACH_SIDE or stream.failure,
            timeout=120, what="batches accepted after the restart",
        )
    finally:
        stream.stop()
        stream.join(GIVE_UP_ON_A_BATCH_S + 30)
    if stream.failure is not None:
        raise stream.failure
    assert not stream.is_alive()

    wait_until(lambda: table.present(stream.accepted_ids) == len(stream.accepted_ids),
               timeout=120, what=f"the {len(stream.accepted_ids)} accepted results")
    wait_for_ingest_to_settle(server)

    assert_each_exactly_once(table, stream.accepted_ids)
    server_errors = {s for s in stream.statuses if isinstance(s, int) and s >= 500}
    assert server_errors == {503}, stream.statuses
    assert set(stream.statuses) == {202, 503}, stream.statuses  # nor 4xx, nor a dead API
    assert stream.without_retry_after == 0, stream.statuses
    assert all(worker.running for worker in workers), "a worker died with Redis"
