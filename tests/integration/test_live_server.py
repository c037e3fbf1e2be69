"""Acceptance of the config-server core, over HTTP, against ``aami-server serve``.

Gunicorn with two gthread workers, PostgreSQL, Redis: the production shape. Tokens are
made with the CLI, as an operator makes them; everything else goes through the REST API.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import redis
import requests

from tests.integration.live_server import LiveServer, alive, last_line, session_members
from tests.support.services import libpq_url

pytestmark = pytest.mark.integration

CHECK_DISK = ["/usr/lib/nagios/plugins/check_disk", "-w", "20%", "-c", "10%", "-p", "/"]
LONG_POLL_WAIT = 20
LONG_POLL_DEADLINE = 1.0  # seconds from the admin's change to the poll's answer
PARKED_FOR = 0.5  # how long a poll waits before the change is made


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def admin(live_server: LiveServer) -> dict[str, str]:
    """Headers of an admin token made with ``aami-server admin-token create``."""
    return bearer(last_line(live_server.cli("admin-token", "create", "--name", "ops")))


@pytest.fixture
def bootstrap_token(live_server: LiveServer) -> str:
    """A bootstrap token made with ``aami-server token create``: its secret."""
    return last_line(live_server.cli("token", "create", "--name", "fleet"))


def register(
    server: LiveServer, token: str, agent_id: str | None = None, **fields: Any
) -> requests.Response:
    body: dict[str, Any] = {"token": token, "hostname": "web-1", **fields}
    if agent_id is not None:
        body["agent_id"] = agent_id
    return requests.post(server.api("bootstrap-tokens/register"), json=body, timeout=30)


def registered(server: LiveServer, token: str, agent_id: str | None = None) -> dict[str, Any]:
    reply = register(server, token, agent_id)
    assert reply.status_code == 201, reply.text
    body: dict[str, Any] = reply.json()
    return body


def targets(server: LiveServer, admin: dict[str, str]) -> dict[str, dict[str, Any]]:
    reply = requests.get(server.api("targets"), headers=admin, timeout=10)
    assert reply.status_code == 200, reply.text
    return {t["id"]: t for t in reply.json()}


# --------------------------------------------------------------------------- registration


def test_register_with_a_new_agent_id_creates_that_target(
    live_server: LiveServer, bootstrap_token: str, admin: dict[str, str]
) -> None:
    agent_id = str(uuid.uuid4())
    reply = register(live_server, bootstrap_token, agent_id, hostname="db-7")

    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["agent_id"] == agent_id
    assert body["access_token"] and body["refresh_token"]
    assert body["heartbeat_interval"] > 0
    assert targets(live_server, admin)[agent_id]["hostname"] == "db-7"


def test_register_without_an_agent_id_gets_a_server_made_uuid(
    live_server: LiveServer, bootstrap_token: str, admin: dict[str, str]
) -> None:
    first = register(live_server, bootstrap_token)
    second = register(live_server, bootstrap_token)

    assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
    made = [first.json()["agent_id"], second.json()["agent_id"]]
    assert [str(uuid.UUID(i)) for i in made] == made
    assert made[0] != made[1]
    assert set(made) <= set(targets(live_server, admin))


def test_reregister_a_known_agent_with_its_refresh_token_reconnects_it(
    live_server: LiveServer, bootstrap_token: str, admin: dict[str, str]
) -> None:
    agent_id = str(uuid.uuid4())
    first = registered(live_server, bootstrap_token, agent_id)

    # Without proof of identity a known id is refused: it could be another host.
    stolen = register(live_server, bootstrap_token, agent_id)
    assert stolen.status_code == 409, stolen.text
    again = register(
        live_server, bootstrap_token, agent_id, hostname="web-1b",
        refresh_token=first["refresh_token"],
    )

    assert again.status_code == 200, again.text
    assert again.json()["agent_id"] == agent_id
    assert again.json()["refresh_token"] != first["refresh_token"]
    known = targets(live_server, admin)
    assert list(known) == [agent_id]
    assert known[agent_id]["hostname"] == "web-1b"


def test_register_a_preregistered_target_connects_the_agent_to_it(
    live_server: LiveServer, bootstrap_token: str, admin: dict[str, str]
) -> None:
    agent_id = str(uuid.uuid4())
    created = requests.post(
        live_server.api("targets"),
        json={"id": agent_id, "hostname": "planned-host", "labels": {"role": "db"}},
        headers=admin,
        timeout=10,
    )
    assert created.status_code == 201, created.text

    reply = register(live_server, bootstrap_token, agent_id, hostname="real-host")

    assert reply.status_code == 200, reply.text
    assert reply.json()["agent_id"] == agent_id
    known = targets(live_server, admin)
    assert list(known) == [agent_id]
    assert known[agent_id]["hostname"] == "real-host"
    assert known[agent_id]["labels"] == {"role": "db"}


def test_bootstrap_max_uses_holds_under_concurrent_registrations(
    live_server: LiveServer, admin: dict[str, str]
) -> None:
    token = last_line(live_server.cli("token", "create", "--name", "burst", "--max-uses", "5"))
    start = threading.Barrier(20)

    def attempt(n: int) -> requests.Response:
        with requests.Session() as session:
            start.wait(timeout=30)
            return session.post(
                live_server.api("bootstrap-tokens/register"),
                json={"token": token, "hostname": f"burst-{n}"},
                timeout=60,
            )

    with ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(pool.map(attempt, range(20)))

    assert Counter(r.status_code for r in replies) == {201: 5, 401: 15}, [
        (r.status_code, r.text[:200]) for r in replies if r.status_code not in (201, 401)
    ]
    refused = [r.json()["error"]["code"] for r in replies if r.status_code == 401]
    assert set(refused) == {"invalid_bootstrap_token"}
    made = {r.json()["agent_id"] for r in replies if r.status_code == 201}
    assert made == set(targets(live_server, admin))
    listed = [line.split() for line in live_server.cli("token", "list").splitlines()]
    assert [row[3] for row in listed if "burst" in row] == ["5/5"]
    assert register(live_server, token).status_code == 401


# --------------------------------------------------------------------------- agent calls


def test_heartbeat_puts_the_target_online(
    live_server: LiveServer, bootstrap_token: str, admin: dict[str, str]
) -> None:
    agent = registered(live_server, bootstrap_token)
    agent_id = agent["agent_id"]
    assert targets(live_server, admin)[agent_id]["status"] != "online"

    beat = requests.post(
        live_server.api(f"agents/{agent_id}/heartbeat"),
        json={"version": "0.1.0", "uptime_s": 12.5, "spool_depth": 0},
        headers=bearer(agent["access_token"]),
        timeout=10,
    )

    assert beat.status_code == 200, beat.text
    assert beat.json()["commands"] == []
    target = targets(live_server, admin)[agent_id]
    assert target["status"] == "online"
    assert target["last_seen"] is not None
    # The server wrote to this test's own PostgreSQL database and Redis db.
    with psycopg.connect(libpq_url(live_server.database_url)) as conn:
        row = conn.execute("SELECT status FROM targets WHERE id = %s", (agent_id,)).fetchone()
    assert row == ("online",)
    with redis.Redis.from_url(live_server.redis_url) as client:
        assert client.dbsize() > 0


def test_fetch_checks_gives_an_etag_and_then_304_while_nothing_changed(
    live_server: LiveServer, bootstrap_token: str, admin: dict[str, str]
) -> None:
    agent = registered(live_server, bootstrap_token)
    agent_id, headers = agent["agent_id"], bearer(agent["access_token"])
    created = requests.post(
        live_server.api("checks"),
        json={"id": "disk", "command": CHECK_DISK, "interval": "60s", "timeout": "10s",
              "assign": {"target_ids": [agent_id]}},
        headers=admin,
        timeout=10,
    )
    assert created.status_code == 201, created.text
    url = live_server.api(f"checks/target/{agent_id}")

    first = requests.get(url, headers=headers, timeout=10)
    assert first.status_code == 200, first.text
    etag = first.headers["ETag"]
    assert etag
    assert [c["id"] for c in first.json()["checks"]] == ["disk"]
    assert first.json()["checks"][0]["command"] == CHECK_DISK

    again = requests.get(url, headers={**headers, "If-None-Match": etag}, timeout=10)
    assert again.status_code == 304
    assert again.headers["ETag"] == etag
    assert again.content == b""

    stale = requests.get(url, headers={**headers, "If-None-Match": '"not-it"'}, timeout=10)
    assert stale.status_code == 200
    assert stale.headers["ETag"] == etag


def test_long_poll_answers_within_a_second_of_a_change_on_either_worker(
    live_server: LiveServer,
    bootstrap_token: str,
    admin: dict[str, str],
    record_property: Any,
) -> None:
    """The poll parks on one worker; the change is made through the same or the other one.

    Each round opens fresh connections and checks in /proc which worker holds each of them,
    so the cross-process wake-up (Redis pub/sub) is exercised for certain, both ways.
    """
    agent = registered(live_server, bootstrap_token)
    agent_id, agent_headers = agent["agent_id"], bearer(agent["access_token"])
    url = live_server.api(f"checks/target/{agent_id}")
    first = requests.post(
        live_server.api("checks"),
        json={"id": "disk", "command": CHECK_DISK, "assign": {"target_ids": []}},
        headers=admin,
        timeout=10,
    )
    assert first.status_code == 201, first.text
    one, two = live_server.worker_pids()
    rounds = [(one, two), (two, one), (one, two), (two, one), (one, one), (two, two)]
    assigned = False
    timings: list[dict[str, Any]] = []

    for poll_worker, change_worker in rounds:
        with live_server.session_on_worker(poll_worker) as poller:
            current = poller.get(url, headers=agent_headers, timeout=10)
            assert current.status_code == 200, current.text
            etag = current.headers["ETag"]
            answer: dict[str, Any] = {}

            def poll(session: requests.Session = poller, etag: str = etag,
                     answer: dict[str, Any] = answer) -> None:
                answer["reply"] = session.get(
                    url, params={"wait": LONG_POLL_WAIT},
                    headers={**agent_headers, "If-None-Match": etag}, timeout=LONG_POLL_WAIT + 10,
                )
                answer["at"] = time.monotonic()

            thread = threading.Thread(target=poll, daemon=True)
            parked_at = time.monotonic()
            thread.start()
            with live_server.session_on_worker(change_worker) as changer:
                time.sleep(max(0.0, PARKED_FOR - (time.monotonic() - parked_at)))
                assert thread.is_alive(), f"the poll returned before any change: {answer}"
                assert live_server.worker_serving(poller.client_port) == poll_worker
                assigned = not assigned
                changed_at = time.monotonic()
                change = changer.patch(
                    live_server.api("checks/disk"),
                    json={"assign": {"target_ids": [agent_id] if assigned else []}},
                    headers=admin,
                    timeout=10,
                )
                assert change.status_code == 200, change.text
                assert live_server.worker_serving(changer.client_port) == change_worker
            thread.join(LONG_POLL_WAIT + 15)
            assert not thread.is_alive()

        elapsed = answer["at"] - changed_at
        timings.append({"poll": poll_worker, "change": change_worker, "s": round(elapsed, 3)})
        reply = answer["reply"]
        assert reply.status_code == 200, reply.text
        assert reply.headers["ETag"] != etag
        assert [c["id"] for c in reply.json()["checks"]] == (["disk"] if assigned else [])
        assert elapsed < LONG_POLL_DEADLINE, f"woke after {elapsed:.3f}s: {timings}"

    record_property("long_poll_wakeups", timings)
    print("long-poll wake-up after the change:", timings)


# --------------------------------------------------------------------------- operations


def test_readyz_reports_database_and_redis_ok_from_every_worker(live_server: LiveServer) -> None:
    for worker in live_server.worker_pids():
        with live_server.session_on_worker(worker) as session:
            reply = session.get(f"{live_server.url}/readyz", timeout=10)
            assert live_server.worker_serving(session.client_port) == worker
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_live_server_stops_on_sigterm_and_leaves_no_process(live_server: LiveServer) -> None:
    master, workers = live_server.pid, live_server.worker_pids()
    assert master is not None and len(workers) == 2

    live_server.stop()

    assert live_server.exit_code == 0, live_server.log_tail()
    assert live_server.leftovers == []
    assert session_members(master) == []
    assert not any(alive(pid) for pid in [master, *workers])
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{live_server.url}/healthz", timeout=2)
