"""Flap detection on PostgreSQL with real workers: one flapping event, not one per flip.

A check alternates ok/critical; the agent posts each result on its own, in order, as soon
as the previous batch was accepted, while two workers store them concurrently. Before the
history is long enough the flips are ordinary state changes; once the check is flapping
it raises exactly one flapping event and no more state-change events.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.integration.ingest_helpers import (
    ResultsTable,
    accepted,
    admin_headers,
    bootstrap_token,
    create_check,
    events,
    register_agent,
    result_series,
    running,
    wait_for_ingest_to_settle,
    wait_until,
)
from tests.integration.live_server import LiveServer
from tests.integration.processes import LiveWorker

pytestmark = pytest.mark.integration

FLIPS = 40
HISTORY = 21  # results the flap detector looks at (server.jobs.flapping.HISTORY_LENGTH)


@pytest.fixture
def workers(live_server: LiveServer) -> Iterator[list[LiveWorker]]:
    started = [LiveWorker(live_server, index=n) for n in range(2)]
    with running(*started):
        yield started


def test_alternating_check_raises_one_flapping_event_not_one_per_flip(
    live_server: LiveServer, workers: list[LiveWorker]
) -> None:
    admin = admin_headers(live_server)
    agent = register_agent(live_server, bootstrap_token(live_server), "flappy-host")
    create_check(live_server, admin, "flappy", [agent.agent_id])
    results = result_series("flappy", ["ok" if n % 2 else "critical" for n in range(FLIPS)])

    for result in results:
        accepted(agent.post_results([result]), 1)
    table = ResultsTable(live_server.database_url)
    wait_until(lambda: table.count() == FLIPS, timeout=60, what=f"{FLIPS} rows")
    wait_for_ingest_to_settle(live_server)

    flapping = events(live_server, admin, target_id=agent.agent_id, kind="flapping")
    assert [(e["previous"], e["current"]) for e in flapping] == [("stable", "flapping")]
    changes = events(live_server, admin, target_id=agent.agent_id, kind="check_state")
    # Flips are news only until the check is known to flap, then they are quiet.
    assert 1 <= len(changes) <= HISTORY, [(e["previous"], e["current"]) for e in changes]
    assert all(e["id"] < flapping[0]["id"] for e in changes)
    reply = requests.get(
        live_server.api(f"targets/{agent.agent_id}/checks"), headers=admin, timeout=10
    )
    assert reply.status_code == 200, reply.text
    (state,) = reply.json()
    assert state["flapping"] is True
    assert state["status"] == results[-1]["status"]
