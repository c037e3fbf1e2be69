"""One agent's poisoned results cannot stall another's, on PostgreSQL and Redis (issue 16).

Agent "poison" posts every result the database used to choke on: an ``executed_at`` that
overflows once in UTC, lone surrogates in the output and in a perfdata label, NUL in the
output, NaN as a threshold (PostgreSQL's json refuses it), a result dated 2999 and one
older than the retention period. The same poisons also go straight onto the Redis pending
list, as an earlier server would have queued them, ahead of agent "normal"'s batches.
Every normal result must be stored exactly once, and each poison refused with a 4xx,
stored in the window's terms, or listed as set aside (API and /metrics).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
import requests

from server.jobs import backlog, dead_letters
from tests.integration.ingest_helpers import (
    Agent,
    ResultsTable,
    accepted,
    admin_headers,
    assert_each_exactly_once,
    batches,
    make_result,
    metric_samples,
    registered_fleet,
    result_series,
    running,
    wait_for_ingest_to_settle,
    wait_until,
)
from tests.integration.live_server import LiveServer
from tests.integration.processes import LiveWorker
from tests.support.services import libpq_url

pytestmark = pytest.mark.integration

NORMAL_RESULTS = 60


@pytest.fixture
def worker(live_server: LiveServer) -> Iterator[LiveWorker]:
    started = LiveWorker(live_server)
    with running(started):
        yield started


@pytest.fixture
def agents(live_server: LiveServer) -> Iterator[dict[str, Agent]]:
    with registered_fleet(live_server, 2) as (poison, normal):
        yield {"poison": poison, "normal": normal}


def now() -> datetime:
    return datetime.now(UTC)


def raw_post(agent: Agent, body: str) -> requests.Response:
    """POST a body as written, so that JSON escapes (``\\ud800``) reach the server."""
    return agent.session.post(
        agent.server.api(f"agents/{agent.agent_id}/check-results"),
        data=body.encode(),
        headers={**agent.headers, "Content-Type": "application/json"},
        timeout=30,
    )


def with_text(result: dict[str, Any], marker: str, escape: str) -> str:
    """``{"results": [result]}`` as JSON text, ``marker`` replaced by a raw JSON escape."""
    return json.dumps({"results": [result]}).replace(marker, escape)


def edge_poisons() -> dict[str, tuple[str, str]]:
    """name -> (body as JSON text, the field the 422 must name)."""
    perf = [{"label": "MARK", "value": 1.0}]
    return {
        "overflowing executed_at": (
            json.dumps({"results": [{**make_result("load", "ok", now()),
                                     "executed_at": "9999-12-31T23:59:59-14:00"}]}),
            "executed_at",
        ),
        "lone surrogate in output": (
            with_text(make_result("load", "ok", now(), output="MARK"), "MARK", "\\ud800"),
            "output",
        ),
        "lone surrogate in a perfdata label": (
            with_text({**make_result("load", "ok", now()), "perfdata": perf}, "MARK", "\\udc00"),
            "label",
        ),
        "NUL in output": (
            with_text(make_result("load", "ok", now(), output="MARK"), "MARK", "\\u0000"),
            "output",
        ),
        "NaN threshold": (
            json.dumps({"results": [{**make_result("load", "ok", now()),
                                     "perfdata": [{"label": "l", "warn": math.nan}]}]}),
            "warn",
        ),
    }


def queued_poisons(agent_id: str) -> dict[str, bytes]:
    """Batches as an earlier server queued them, unchecked, straight onto the list."""
    def batch(result: dict[str, Any]) -> bytes:
        return json.dumps({"agent_id": agent_id, "results": [result]}).encode()

    overflow = {**make_result("load", "ok", now()), "executed_at": "9999-12-31T23:59:59-14:00"}
    return {
        "overflowing executed_at": batch(overflow),
        "lone surrogate in output": batch(make_result("load", "ok", now(), output="\ud800")),
        "lone surrogate in a perfdata label": batch(
            {**make_result("load", "ok", now()), "perfdata": [{"label": "\udc00", "value": 1}]}
        ),
        "NaN threshold": batch(
            {**make_result("load", "ok", now()), "perfdata": [{"label": "l", "warn": math.nan}]}
        ),
        "not a batch": b"{not json",
    }


def listed_letters(server: LiveServer, admin: dict[str, str]) -> set[str]:
    reply = requests.get(f"{server.url}/api/v1/ingest/dead-letters", headers=admin, timeout=30)
    assert reply.status_code == 200, reply.text
    return {letter["id"] for letter in reply.json()}


def test_poison_from_one_agent_never_holds_up_another(
    live_server: LiveServer, worker: LiveWorker, agents: dict[str, Agent]
) -> None:
    poison, normal = agents["poison"], agents["normal"]
    admin = admin_headers(live_server)
    table = ResultsTable(live_server.database_url)

    # 1. At the edge: refused with a 422 naming the field, nothing queued.
    for name, (body, field) in edge_poisons().items():
        reply = raw_post(poison, body)
        assert reply.status_code == 422, (name, reply.status_code, reply.text)
        assert field in reply.text, (name, reply.text)

    # 2. Behind the edge: queued by "an earlier server" ahead of the normal agent's batches.
    with contextlib.closing(redis.Redis.from_url(live_server.redis_url)) as client:
        queued = queued_poisons(poison.agent_id)
        client.rpush(backlog.PENDING_KEY, *queued.values())
        normal_results = result_series("load", ["ok", "warning", "critical"] * 20)
        for batch in batches(normal_results, 10):
            accepted(normal.post_results(batch), len(batch))
        wait_for_ingest_to_settle(live_server)

        # Every normal result stored once; every queued poison listed as set aside.
        assert_each_exactly_once(table, [r["result_id"] for r in normal_results])
        expected = {dead_letters.letter_id(item) for item in queued.values()}
        assert listed_letters(live_server, admin) == expected
        samples = metric_samples(live_server)
        assert samples[("aami_ingest_dead_letters", ())] == len(expected)
        assert samples[("aami_ingest_batches_set_aside_total", ())] == len(expected)
        assert table.states()[(normal.agent_id, "load")]["status"] == "critical"

        # 3. A replay of a batch that is still poison sets it aside again, never loses it.
        letter = dead_letters.letter_id(queued["lone surrogate in output"])
        reply = requests.post(
            f"{live_server.url}/api/v1/ingest/dead-letters/{letter}/replay", headers=admin,
            timeout=30,
        )
        assert reply.status_code == 200 and reply.json()["outcome"] == "queued", reply.text
        wait_for_ingest_to_settle(live_server)
        wait_until(lambda: listed_letters(live_server, admin) == expected, timeout=30,
                   what="the replayed poison batch to be set aside again")

    # 4. The window: dated 2999 is stored at its receive time and hides nothing after it;
    #    older than the retention is refused alone.
    future = make_result("load", "ok", datetime(2999, 1, 1, tzinfo=UTC))
    accepted(poison.post_results([future]), 1)
    critical = make_result("load", "critical", now())
    accepted(poison.post_results([critical]), 1)
    stale = make_result("load", "ok", now() - timedelta(days=31))
    reply = poison.post_results([stale])
    assert reply.status_code == 202 and reply.json()["accepted"] == 0, reply.text
    assert "retention" in reply.json()["rejected"][0]["reason"]
    wait_for_ingest_to_settle(live_server)
    assert table.states()[(poison.agent_id, "load")]["status"] == "critical"
    with psycopg.connect(libpq_url(live_server.database_url)) as connection:
        executed_at, agent_executed_at = connection.execute(
            "SELECT executed_at, agent_executed_at FROM check_results WHERE result_id = %s",
            (future["result_id"],),
        ).fetchone()
    assert agent_executed_at == datetime(2999, 1, 1, tzinfo=UTC)
    assert executed_at < now()
    assert table.present([stale["result_id"]]) == 0
