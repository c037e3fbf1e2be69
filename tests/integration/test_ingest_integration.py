"""Result ingestion end to end: HTTP -> gunicorn -> Redis -> two ``aami-server worker``
processes -> PostgreSQL.

Ten agents register with a bootstrap token made by the CLI and post a hundred results
each, in batches sent concurrently and out of order. Every row must be in PostgreSQL
exactly once, a second delivery of every batch must add nothing, and each check's
current state must be its newest result whatever order the batches were stored in.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.integration.ingest_helpers import (
    Agent,
    ResultsTable,
    accepted,
    admin_headers,
    assert_each_exactly_once,
    batches,
    make_result,
    registered_fleet,
    running,
    wait_for_ingest_to_settle,
    wait_until,
)
from tests.integration.live_server import LiveServer
from tests.integration.processes import LiveWorker

pytestmark = pytest.mark.integration

AGENTS = 10
RESULTS_PER_AGENT = 100
BATCH_SIZE = 20
CHECKS = ("load", "disk")
STATUSES = ("ok", "warning", "critical", "unknown")


@pytest.fixture
def workers(live_server: LiveServer) -> Iterator[list[LiveWorker]]:
    started = [LiveWorker(live_server, index=n) for n in range(2)]
    with running(*started):
        yield started


@pytest.fixture
def fleet(live_server: LiveServer) -> Iterator[list[Agent]]:
    """Ten registered agents, each assigned both checks."""
    with registered_fleet(live_server, AGENTS, CHECKS) as agents:
        yield agents


def agent_results(n: int) -> list[dict[str, Any]]:
    """A hundred results of agent ``n``, oldest first, both checks interleaved; the
    statuses differ per agent so that a mixed-up state would show. One output is not
    ASCII. (NUL, which PostgreSQL text cannot store, is refused by the API with a 422 and
    replaced by the agent; tests/server/test_ingest_backlog.py covers a queued one.)"""
    start = datetime.now(UTC) - timedelta(hours=1)
    return [
        make_result(
            CHECKS[i % 2],
            STATUSES[(n + i // 7) % len(STATUSES)],
            start + timedelta(seconds=i),
            output=f"agent {n} result {i}" + (" \u00fcn\u00efcode \u2713" if i == 50 else ""),
        )
        for i in range(RESULTS_PER_AGENT)
    ]


def post_everything(posts: list[tuple[Agent, list[dict[str, Any]]]]) -> None:
    """Post each (agent, batch) from eight threads at once; every one must be a 202."""

    def post(item: tuple[Agent, list[dict[str, Any]]]) -> None:
        agent, batch = item
        # requests.post, not the agent's session: sessions are not shared across threads.
        reply = requests.post(
            agent.server.api(f"agents/{agent.agent_id}/check-results"),
            json={"results": batch},
            headers=agent.headers,
            timeout=30,
        )
        accepted(reply, len(batch))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(post, posts))


def test_every_result_is_stored_exactly_once_and_a_second_delivery_adds_nothing(
    live_server: LiveServer, workers: list[LiveWorker], fleet: list[Agent]
) -> None:
    table = ResultsTable(live_server.database_url)
    results = {agent.agent_id: agent_results(n) for n, agent in enumerate(fleet)}
    posts = [
        (agent, batch)
        for agent in fleet
        for batch in batches(results[agent.agent_id], BATCH_SIZE)
    ]
    random.Random(4).shuffle(posts)  # each agent's batches arrive out of order
    every_id = [r["result_id"] for rs in results.values() for r in rs]
    assert len(every_id) == AGENTS * RESULTS_PER_AGENT

    post_everything(posts)
    wait_until(lambda: table.count() >= len(every_id), timeout=60, what="1000 rows")
    wait_for_ingest_to_settle(live_server)

    assert_each_exactly_once(table, every_id)

    # The same batches again, as an agent that never saw the 202s would send them.
    post_everything(posts)
    wait_for_ingest_to_settle(live_server)

    assert table.count() == len(every_id)
    assert_each_exactly_once(table, every_id)


def test_check_states_follow_the_newest_result_whatever_the_arrival_order(
    live_server: LiveServer, workers: list[LiveWorker], fleet: list[Agent]
) -> None:
    table = ResultsTable(live_server.database_url)
    results = {agent.agent_id: agent_results(n) for n, agent in enumerate(fleet)}
    posts = [
        (agent, batch)
        for agent in fleet
        for batch in batches(results[agent.agent_id], BATCH_SIZE)
    ]
    # Newest batches first: every older batch that arrives afterwards is history.
    posts.reverse()

    post_everything(posts)
    wait_until(lambda: table.count() >= AGENTS * RESULTS_PER_AGENT, timeout=60,
               what="1000 rows")
    wait_for_ingest_to_settle(live_server)

    states = table.states()
    assert len(states) == AGENTS * len(CHECKS), sorted(states)
    admin = admin_headers(live_server)
    for agent in fleet:
        for check_id in CHECKS:
            newest = [r for r in results[agent.agent_id] if r["check_id"] == check_id][-1]
            state = states[(agent.agent_id, check_id)]
            assert state["last_result_id"] == newest["result_id"], (agent.agent_id, check_id)
            assert (state["status"], state["exit_code"], state["output"]) == (
                newest["status"], newest["exit_code"], newest["output"]
            )
            assert state["executed_at"] == datetime.fromisoformat(newest["executed_at"])
        # The operator's view of the same states.
        reply = requests.get(
            live_server.api(f"targets/{agent.agent_id}/checks"), headers=admin, timeout=30
        )
        assert reply.status_code == 200, reply.text
        shown = {c["check_id"]: c["status"] for c in reply.json()}
        assert shown == {
            check_id: states[(agent.agent_id, check_id)]["status"] for check_id in CHECKS
        }
