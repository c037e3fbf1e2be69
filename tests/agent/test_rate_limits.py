"""Rate limits (docs/agent-api.md): the whole agent, with the real REST transport against
a local HTTP server, waits at least Retry-After after a 429 on registration or refresh,
and none of its loops asks sooner."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import load_config
from agent.credentials import Credentials, CredentialStore
from agent.runner import Agent
from tests.agent.fakes import wait_for
from tests.agent.test_rest_transport import AGENT_ID, GRANT, FakeServer, Reply, error
from tests.agent.test_runner import fast_backoff, write_config

RETRY_AFTER = 2


@pytest.fixture
def http() -> Iterator[FakeServer]:
    fake = FakeServer().start()
    fake.script(f"/agents/{AGENT_ID}/heartbeat", Reply(200, {"heartbeat_interval": 30}))
    fake.script(f"/checks/target/{AGENT_ID}", Reply(304, delay=0.2))
    fake.script(f"/agents/{AGENT_ID}/check-results", Reply(202, {"accepted": 0}))
    yield fake
    fake.stop()


@pytest.fixture
def start_agent(tmp_path: Path, http: FakeServer) -> Iterator[Callable[[], Agent]]:
    (tmp_path / "agent-id").write_text(AGENT_ID + "\n")
    agents: list[Agent] = []

    def start() -> Agent:
        agent = Agent(load_config(write_config(tmp_path, address=http.url)),
                      backoff=fast_backoff)
        agents.append(agent)
        agent.start()
        return agent

    yield start
    for agent in agents:
        agent.shutdown(0.5)


def calls_to(http: FakeServer, path: str) -> list[float]:
    return [seen.at for seen in http.requests if seen.path == "/api/v1" + path]


def test_a_rate_limited_registration_is_retried_no_sooner_than_retry_after(
    http: FakeServer, start_agent: Callable[[], Agent]
) -> None:
    http.script("/bootstrap-tokens/register",
                Reply(429, error("rate_limited"), headers={"Retry-After": str(RETRY_AFTER)}),
                Reply(201, GRANT))

    start_agent()
    wait_for(lambda: calls_to(http, f"/agents/{AGENT_ID}/heartbeat"), timeout=10,
             what="a heartbeat after registering")

    registrations = calls_to(http, "/bootstrap-tokens/register")
    # Three loops needed credentials; the server was asked once, then once more after.
    assert len(registrations) == 2
    assert registrations[1] - registrations[0] >= RETRY_AFTER


def test_a_rate_limited_token_refresh_is_retried_no_sooner_than_retry_after(
    tmp_path: Path, http: FakeServer, start_agent: Callable[[], Agent]
) -> None:
    now = time.time()
    CredentialStore(tmp_path / "state" / "credentials.json").save(Credentials(
        AGENT_ID, "expired-jwt", "aami_rt_0", expires_at=now - 10, refresh_at=now - 70))
    http.script(f"/agents/{AGENT_ID}/token",
                Reply(429, error("rate_limited"), headers={"Retry-After": str(RETRY_AFTER)}),
                Reply(200, {**GRANT, "agent_id": None}))

    start_agent()
    wait_for(lambda: calls_to(http, f"/agents/{AGENT_ID}/heartbeat"), timeout=10,
             what="a heartbeat after the refresh")

    refreshes = calls_to(http, f"/agents/{AGENT_ID}/token")
    assert len(refreshes) == 2
    assert refreshes[1] - refreshes[0] >= RETRY_AFTER
    assert calls_to(http, "/bootstrap-tokens/register") == []  # a wait, not a failure
