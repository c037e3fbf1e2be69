"""Agent liveness with two ``aami-server cron`` processes racing: one event per transition.

Heartbeats come every second (``AAMI_HEARTBEAT_INTERVAL=1``); an agent is stale after 3
missed and offline after 11. The offline threshold leaves a stale window (8 s) longer than
the sweep period (5 s, the floor of ``max(5, interval // 3)``), so every cron's sweep
sees the agent stale before it can see it offline. Both crons enqueue every sweep, and
both workers run them at once: the conditional UPDATEs must still record each transition
exactly once, and two heartbeats arriving together on the agent's return only one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from rq.job import Job
from rq.registry import FinishedJobRegistry

from tests.integration.ingest_helpers import (
    Agent,
    admin_headers,
    bootstrap_token,
    events,
    register_agent,
    running,
    wait_until,
)
from tests.integration.live_server import LiveServer
from tests.integration.processes import LiveCron, LiveWorker

pytestmark = pytest.mark.integration

LIVENESS = {
    "AAMI_HEARTBEAT_INTERVAL": "1",
    "AAMI_STALE_AFTER_INTERVALS": "3",
    "AAMI_OFFLINE_AFTER_INTERVALS": "11",
}
SWEEP = "server.jobs.sweeps.sweep_stale_agents"


@pytest.fixture
def server(pg_database_url: str, redis_db_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "server", database_url=pg_database_url,
                      redis_url=redis_db_url, extra_settings=LIVENESS)
    with running(live):
        yield live


@pytest.fixture
def background(server: LiveServer) -> Iterator[list[LiveCron]]:
    """Two workers and two crons; yields the crons."""
    crons = [LiveCron(server, index=n) for n in range(2)]
    with running(*(LiveWorker(server, index=n) for n in range(2)), *crons):
        yield crons


def finished_sweeps(redis_url: str) -> int:
    """How many agent sweeps the workers have finished so far."""
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        registry = FinishedJobRegistry("maintenance", connection=client)
        jobs = Job.fetch_many(registry.get_job_ids(), connection=client)
        return sum(1 for job in jobs if job is not None and job.func_name == SWEEP)


def status_of(server: LiveServer, admin: dict[str, str], agent: Agent) -> str:
    reply = requests.get(server.api(f"targets/{agent.agent_id}"), headers=admin, timeout=10)
    assert reply.status_code == 200, reply.text
    status: str = reply.json()["status"]
    return status


def transitions(server: LiveServer, admin: dict[str, str], agent: Agent) -> list[Any]:
    return [
        (e["previous"], e["current"])
        for e in events(server, admin, target_id=agent.agent_id, kind="target_status")
    ]


def heartbeat_until(agent: Agent, done: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Heartbeat twice a second, as a healthy agent would, until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        assert agent.heartbeat().status_code == 200
        time.sleep(0.5)


def sweeps_after(redis_url: str, more: int) -> Callable[[], bool]:
    """True once ``more`` agent sweeps have finished after this call."""
    target = finished_sweeps(redis_url) + more
    return lambda: finished_sweeps(redis_url) >= target


def test_silent_agent_goes_stale_then_offline_then_online_once_each_under_two_crons(
    server: LiveServer, background: list[LiveCron]
) -> None:
    admin = admin_headers(server)
    agent = register_agent(server, bootstrap_token(server), "quiet-host")
    assert agent.heartbeat().status_code == 200
    assert status_of(server, admin, agent) == "online"

    # Heartbeating through several sweeps keeps it online.
    heartbeat_until(agent, sweeps_after(server.redis_url, 3), timeout=40, what="3 sweeps")
    assert transitions(server, admin, agent) == [("pending", "online")]

    # Silence.
    wait_until(lambda: status_of(server, admin, agent) == "stale", timeout=30,
               what="the silent agent to be stale")
    wait_until(lambda: status_of(server, admin, agent) == "offline", timeout=40,
               what="the silent agent to be offline")

    # It comes back with two heartbeats at once, served by both gunicorn workers.
    together = threading.Barrier(2)
    codes: list[int] = []

    def beat() -> None:
        with requests.Session() as session:
            together.wait()
            reply = session.post(
                server.api(f"agents/{agent.agent_id}/heartbeat"),
                json={"version": "ingest-test"}, headers=agent.headers, timeout=10,
            )
            codes.append(reply.status_code)

    beats = [threading.Thread(target=beat) for _ in range(2)]
    for thread in beats:
        thread.start()
    for thread in beats:
        thread.join(30)
    assert codes == [200, 200]
    assert status_of(server, admin, agent) == "online"

    # Both crons keep sweeping while it heartbeats again: nothing may be recorded twice.
    heartbeat_until(agent, sweeps_after(server.redis_url, 4), timeout=40, what="4 sweeps")
    assert status_of(server, admin, agent) == "online"

    assert transitions(server, admin, agent) == [
        ("pending", "online"),
        ("online", "stale"),
        ("stale", "offline"),
        ("offline", "online"),
    ]
    assert all(cron.running for cron in background)
