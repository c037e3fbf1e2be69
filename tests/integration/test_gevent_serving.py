"""``aami-server serve --worker-class gevent``: parked long-polls cost no thread each.

One gunicorn process with 32 threads can hold 32 requests; a fleet keeps one long-poll
parked per agent. Under gevent each parked poll is a greenlet, and psycopg 3 and redis-py
wait cooperatively once the worker has monkey-patched the standard library, so the same
process answers heartbeats at once while hundreds of polls wait. Raw sockets park the
polls here, so the test itself needs no thread per poll either.
"""

from __future__ import annotations

import importlib.util
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.ingest_helpers import bootstrap_token, register_agent
from tests.integration.live_server import AAMI_SERVER, LiveServer, aami_env
from tests.support.services import LOOPBACK

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(importlib.util.find_spec("gevent") is None,
                       reason="gevent is not installed (pip install gevent)"),
]

PARKED = 300  # far more than the 32 threads a gthread process would have
WAIT_S = 20


class GeventServer(LiveServer):
    """One gunicorn process, gevent worker class."""

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [str(AAMI_SERVER), "serve", "--host", LOOPBACK, "--port", str(self.port),
                "--workers", "1", "--worker-class", "gevent", "--worker-connections", "2000"]
        return self._popen(argv, env=aami_env(self.settings))


@pytest.fixture
def server(pg_database_url: str, redis_db_url: str, tmp_path: Path) -> Iterator[GeventServer]:
    live = GeventServer(tmp_path / "server", database_url=pg_database_url,
                        redis_url=redis_db_url, workers=1)
    try:
        live.start()
        yield live
    finally:
        live.close()
    assert not live.leftovers, live.leftovers


def park_polls(server: LiveServer, agent_id: str, token: str, etag: str) -> list[socket.socket]:
    request = (
        f"GET /api/v1/checks/target/{agent_id}?wait={WAIT_S} HTTP/1.1\r\n"
        f"Host: {LOOPBACK}:{server.port}\r\nAuthorization: Bearer {token}\r\n"
        f"If-None-Match: {etag}\r\nConnection: close\r\n\r\n"
    ).encode()
    polls = []
    for _ in range(PARKED):
        sock = socket.create_connection((LOOPBACK, server.port), timeout=10)
        sock.sendall(request)
        polls.append(sock)
    return polls


def read_answers(polls: list[socket.socket], timeout: float) -> list[bytes]:
    """The status line of every poll's answer, read without a thread per socket."""
    answers: dict[socket.socket, bytes] = {}
    pending = set(polls)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        ready, _, _ = select.select(list(pending), [], [], 0.5)
        for sock in ready:
            data = sock.recv(65536)
            answers[sock] = answers.get(sock, b"") + data
            if not data or b"\r\n\r\n" in answers[sock]:
                pending.discard(sock)
    for sock in polls:
        sock.close()
    return [answers.get(sock, b"").split(b"\r\n", 1)[0] for sock in polls]


def test_heartbeats_answer_at_once_while_hundreds_of_polls_are_parked(
    server: GeventServer,
) -> None:
    agent = register_agent(server, bootstrap_token(server), "gevent-host")
    etag = requests.get(server.api(f"checks/target/{agent.agent_id}"), headers=agent.headers,
                        timeout=10).headers["ETag"]
    polls = park_polls(server, agent.agent_id, agent.access_token, etag)
    try:
        time.sleep(1)  # every poll has reached the server and parked
        latencies = []
        for _ in range(20):
            began = time.monotonic()
            assert agent.heartbeat(timeout=10).status_code == 200
            latencies.append(time.monotonic() - began)
    finally:
        answers = read_answers(polls, WAIT_S + 15)
    # A thread per poll would have made each heartbeat wait for a poll to end (~20 s).
    assert max(latencies) < 2.0, latencies
    assert answers.count(b"HTTP/1.1 304 NOT MODIFIED") == PARKED, set(answers)


def test_sigterm_answers_parked_polls_at_once_under_gevent(server: GeventServer) -> None:
    agent = register_agent(server, bootstrap_token(server), "gevent-host")
    etag = requests.get(server.api(f"checks/target/{agent.agent_id}"), headers=agent.headers,
                        timeout=10).headers["ETag"]
    polls = park_polls(server, agent.agent_id, agent.access_token, etag)
    time.sleep(1)
    began = time.monotonic()
    server.stop(timeout=WAIT_S + 10)
    stopped_in = time.monotonic() - began
    answers = read_answers(polls, 5)
    assert server.exit_code == 0, server.log_tail()
    # The graceful stop did not sit out the polls' wait: they were answered first.
    assert stopped_in < 10, stopped_in
    assert answers.count(b"HTTP/1.1 304 NOT MODIFIED") == PARKED, set(answers)
