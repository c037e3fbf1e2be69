"""Driving result ingestion end to end: agents over HTTP, rows counted in PostgreSQL.

Used by the ingestion integration tests and by ``bench/ingest_bench.py``. Agents here are
plain HTTP clients that register with a bootstrap token made by the CLI, as a real agent
does; what reached the database is read straight from PostgreSQL, not through the API.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.live_server import LiveServer, last_line
from tests.support.services import LocalServer, libpq_url

T = TypeVar("T")

EXIT_CODES = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}
CHECK_DUMMY = "/usr/lib/nagios/plugins/check_dummy"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_until(
    predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after
    ``timeout`` seconds, with the last value it returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} ({value!r})")
        time.sleep(interval)


@contextlib.contextmanager
def running(*processes: LocalServer) -> Iterator[None]:
    """Start ``processes`` (in order) and close every one of them on the way out."""
    try:
        for process in processes:
            process.start()
        yield
    finally:
        for process in processes:
            process.close()


# --------------------------------------------------------------------------- operator side


def admin_headers(server: LiveServer) -> dict[str, str]:
    """Headers of a new admin token, made with ``aami-server admin-token create``."""
    return bearer(last_line(server.cli("admin-token", "create", "--name", "ingest-ops")))


def bootstrap_token(server: LiveServer, *extra: str) -> str:
    """A new bootstrap token's secret, made with ``aami-server token create``."""
    return last_line(server.cli("token", "create", "--name", "ingest-fleet", *extra))


def create_check(
    server: LiveServer,
    admin: dict[str, str],
    check_id: str,
    target_ids: Sequence[str],
    *,
    interval: str = "60s",
) -> None:
    reply = requests.post(
        server.api("checks"),
        json={
            "id": check_id,
            "command": [CHECK_DUMMY, "0"],
            "interval": interval,
            "timeout": "10s",
            "assign": {"target_ids": list(target_ids)},
        },
        headers=admin,
        timeout=30,
    )
    assert reply.status_code == 201, reply.text


def events(
    server: LiveServer, admin: dict[str, str], **query: str
) -> list[dict[str, Any]]:
    """``GET /events`` with ``query``, oldest first."""
    reply = requests.get(
        server.api("events"), params={"limit": "1000", **query}, headers=admin, timeout=30
    )
    assert reply.status_code == 200, reply.text
    return list(reversed(reply.json()))


# --------------------------------------------------------------------------- agent side


@dataclass
class Agent:
    """A registered agent, driven by hand: its id, access token and HTTP session."""

    server: LiveServer
    agent_id: str
    access_token: str
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.access_token)

    def post_results(self, results: list[dict[str, Any]], timeout: float = 30) -> requests.Response:
        return self.session.post(
            self.server.api(f"agents/{self.agent_id}/check-results"),
            json={"results": results},
            headers=self.headers,
            timeout=timeout,
        )

    def heartbeat(self, timeout: float = 10) -> requests.Response:
        return self.session.post(
            self.server.api(f"agents/{self.agent_id}/heartbeat"),
            json={"version": "ingest-test"},
            headers=self.headers,
            timeout=timeout,
        )

    def close(self) -> None:
        self.session.close()


def register_agent(server: LiveServer, token: str, hostname: str) -> Agent:
    agent_id = str(uuid.uuid4())
    reply = requests.post(
        server.api("bootstrap-tokens/register"),
        json={"token": token, "agent_id": agent_id, "hostname": hostname},
        timeout=30,
    )
    assert reply.status_code == 201, reply.text
    return Agent(server, agent_id, reply.json()["access_token"])


def register_agents(
    server: LiveServer, token: str, count: int, prefix: str = "host"
) -> list[Agent]:
    return [register_agent(server, token, f"{prefix}-{n}") for n in range(count)]


@contextlib.contextmanager
def registered_fleet(
    server: LiveServer, count: int, check_ids: Sequence[str] = ("load",)
) -> Iterator[list[Agent]]:
    """``count`` agents registered with a new bootstrap token, each assigned every check of
    ``check_ids``; their HTTP sessions are closed on the way out."""
    agents = register_agents(server, bootstrap_token(server), count)
    admin = admin_headers(server)
    for check_id in check_ids:
        create_check(server, admin, check_id, [a.agent_id for a in agents])
    try:
        yield agents
    finally:
        for agent in agents:
            agent.close()


def make_result(
    check_id: str, status: str, executed_at: datetime, *, output: str | None = None
) -> dict[str, Any]:
    return {
        "result_id": str(uuid.uuid4()),
        "check_id": check_id,
        "status": status,
        "exit_code": EXIT_CODES[status],
        "output": output if output is not None else f"{status.upper()} - ingest test",
        "perfdata": [{"label": "load1", "value": 0.25, "uom": "", "warn": 4.0, "crit": 8.0}],
        "duration_ms": 7,
        "executed_at": executed_at.isoformat().replace("+00:00", "Z"),
    }


def result_series(
    check_id: str, statuses: Iterable[str], *, start: datetime | None = None, step_s: float = 1.0
) -> list[dict[str, Any]]:
    """One result per status, ``step_s`` apart, oldest first, ending a little before now."""
    statuses = list(statuses)
    first = start or datetime.now(UTC) - timedelta(seconds=step_s * (len(statuses) + 5))
    return [
        make_result(check_id, status, first + timedelta(seconds=step_s * n))
        for n, status in enumerate(statuses)
    ]


def batches(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[n : n + size]) for n in range(0, len(items), size)]


def accepted(reply: requests.Response, expected: int) -> str | None:
    """Assert a 202 that accepted all ``expected`` results; returns the job id."""
    assert reply.status_code == 202, (reply.status_code, reply.text)
    body = reply.json()
    assert body["accepted"] == expected and body["rejected"] == [], body
    job_id: str | None = body["job_id"]
    return job_id


def metric_samples(server: LiveServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /metrics`` as {(sample name, sorted labels): value}."""
    reply = requests.get(f"{server.url}/metrics", timeout=30)
    assert reply.status_code == 200, reply.text
    found = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def ingest_backlog(server: LiveServer) -> int:
    """Result batches the server accepted and has not stored yet (``/metrics``)."""
    samples = metric_samples(server)
    return int(
        sum(v for (name, _), v in samples.items() if name == "aami_ingest_backlog_batches")
    )


def wait_for_ingest_to_settle(server: LiveServer, timeout: float = 60) -> None:
    """Wait until every batch answered with a 202 so far is stored."""
    wait_until(lambda: ingest_backlog(server) == 0, timeout=timeout,
               what="the ingest backlog to empty")


# --------------------------------------------------------------------------- the database


class ResultsTable:
    """Read-only look at ``check_results`` / ``check_states`` of the server's database."""

    def __init__(self, database_url: str) -> None:
        self.dsn = libpq_url(database_url)

    def _rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            return conn.execute(query, params).fetchall()

    def count(self) -> int:
        return int(self._rows("SELECT count(*) FROM check_results")[0][0])

    def result_id_counts(self) -> dict[str, int]:
        """How many rows each stored ``result_id`` has."""
        rows = self._rows("SELECT result_id, count(*) FROM check_results GROUP BY result_id")
        return {result_id: int(n) for result_id, n in rows}

    def present(self, result_ids: Iterable[str]) -> int:
        """How many of ``result_ids`` have at least one row."""
        wanted = list(result_ids)
        if not wanted:
            return 0
        rows = self._rows(
            "SELECT count(DISTINCT result_id) FROM check_results WHERE result_id = ANY(%s)",
            (wanted,),
        )
        return int(rows[0][0])

    def states(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Current check states keyed by (target_id, check_id)."""
        rows = self._rows(
            "SELECT target_id, check_id, status, exit_code, output, executed_at,"
            " last_result_id, occurrences, flapping FROM check_states"
        )
        keys = ("status", "exit_code", "output", "executed_at", "last_result_id",
                "occurrences", "flapping")
        return {(r[0], r[1]): dict(zip(keys, r[2:], strict=True)) for r in rows}


def assert_each_exactly_once(table: ResultsTable, result_ids: Iterable[str]) -> None:
    """Every one of ``result_ids`` has exactly one row, and no other row exists."""
    wanted = set(result_ids)
    stored = table.result_id_counts()
    missing = wanted - set(stored)
    doubled = {r: n for r, n in stored.items() if n != 1}
    strangers = set(stored) - wanted
    assert not missing, f"{len(missing)} of {len(wanted)} results are missing"
    assert not doubled, f"{len(doubled)} results are stored more than once: {list(doubled)[:5]}"
    assert not strangers, f"{len(strangers)} rows nobody posted: {list(strangers)[:5]}"
