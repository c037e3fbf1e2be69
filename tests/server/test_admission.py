"""Admission control: past its places, a process answers 503 server_busy at once, with a
Retry-After; a registration storm cannot take the places heartbeats need; a parked
long-poll holds no place."""

from __future__ import annotations

import threading
import time

import pytest

from server import create_app, migrate
from server.api import admission, registration
from server.db import get_database
from server.errors import SettingsError
from server.services import tokens
from tests.server.conftest import assert_error, bearer, new_agent_id


@pytest.fixture
def small_app(tmp_path):
    """One place for any call, one of them for registrations, 0.2 s to wait for it."""
    app = create_app({"DATA_DIR": str(tmp_path), "LOG_LEVEL": "warning",
                      "MAX_ACTIVE_REQUESTS": 2, "MAX_ACTIVE_REGISTRATIONS": 1,
                      "ADMISSION_WAIT_MS": 200, "REGISTER_RATE_LIMIT": "off"})
    migrate.upgrade(app.extensions["aami.settings"].database_url())
    return app


def _secret(app) -> str:
    with get_database(app).session() as session:
        return tokens.create_bootstrap_token(session, name="fleet").secret


def _register(app, secret):
    return app.test_client().post("/api/v1/bootstrap-tokens/register",
                                  json={"token": secret, "agent_id": new_agent_id(),
                                        "hostname": "h"})


def _blocking_registration(monkeypatch, release: threading.Event, entered: threading.Event):
    real = registration.register_agent

    def slow(*args, **kwargs):
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(registration, "register_agent", slow)


def test_a_second_registration_is_refused_fast_while_the_first_holds_its_place(
    small_app, monkeypatch
):
    secret = _secret(small_app)
    release, entered = threading.Event(), threading.Event()
    _blocking_registration(monkeypatch, release, entered)
    first: list = []
    holder = threading.Thread(target=lambda: first.append(_register(small_app, secret)))
    holder.start()
    assert entered.wait(10)
    started = time.monotonic()
    refused = _register(small_app, secret)
    waited = time.monotonic() - started
    release.set()
    holder.join(10)
    assert_error(refused, 503, "server_busy")
    low, high = admission.RETRY_AFTER_RANGE
    assert low <= int(refused.headers["Retry-After"]) <= high
    assert waited < 2, f"refused after {waited:.1f}s, not at once"
    assert first[0].status_code == 201
    # The place came back: the next registration is admitted.
    assert _register(small_app, secret).status_code == 201


def test_heartbeats_keep_their_places_while_registrations_are_queued(small_app, monkeypatch):
    secret = _secret(small_app)
    agent = _register(small_app, secret).get_json()
    release, entered = threading.Event(), threading.Event()
    _blocking_registration(monkeypatch, release, entered)
    # One registration works, the other waits for the registration place; neither may
    # leave the heartbeat without the process's second place.
    holders = [threading.Thread(target=lambda: _register(small_app, secret))
               for _ in range(2)]
    for holder in holders:
        holder.start()
    try:
        assert entered.wait(10)
        time.sleep(0.05)  # the second registration is now queued on its place
        beat = small_app.test_client().post(
            f"/api/v1/agents/{agent['agent_id']}/heartbeat", json={"version": "t"},
            headers=bearer(agent["access_token"]))
        assert beat.status_code == 200, beat.get_json()
    finally:
        release.set()
        for holder in holders:
            holder.join(10)


def test_a_parked_long_poll_holds_no_place(small_app):
    secret = _secret(small_app)
    agents = [_register(small_app, secret).get_json() for _ in range(3)]
    client = small_app.test_client()

    def etag_of(agent):
        return client.get(f"/api/v1/checks/target/{agent['agent_id']}",
                          headers=bearer(agent["access_token"])).headers["ETag"]

    etags = [etag_of(agent) for agent in agents]
    replies: list[int] = []

    def park(agent, etag):
        reply = small_app.test_client().get(
            f"/api/v1/checks/target/{agent['agent_id']}?wait=2",
            headers={**bearer(agent["access_token"]), "If-None-Match": etag})
        replies.append(reply.status_code)

    # Three parked polls on a process with two places.
    parked = [threading.Thread(target=park, args=pair) for pair in zip(agents, etags,
                                                                      strict=True)]
    for thread in parked:
        thread.start()
    time.sleep(0.5)
    beat = client.post(f"/api/v1/agents/{agents[0]['agent_id']}/heartbeat",
                       json={"version": "t"}, headers=bearer(agents[0]["access_token"]))
    for thread in parked:
        thread.join(10)
    assert beat.status_code == 200, beat.get_json()
    assert replies == [304, 304, 304]


def test_registrations_cannot_have_more_places_than_all_calls(tmp_path):
    with pytest.raises(SettingsError, match="MAX_ACTIVE_REGISTRATIONS"):
        create_app({"DATA_DIR": str(tmp_path), "MAX_ACTIVE_REQUESTS": 2,
                    "MAX_ACTIVE_REGISTRATIONS": 3})


def test_places_are_given_back_when_a_pool_is_full():
    places = admission.Admission(1, {"registration": 1}, wait=0.05)
    assert places.acquire("registration")
    # A call of any kind now finds the general pool full; a failed registration attempt
    # must not keep the registration place it took first.
    assert not places.acquire(admission.ALL)
    places.release("registration")
    assert places.acquire(admission.ALL)
    assert not places.acquire("registration")  # its general place is taken
    places.release(admission.ALL)
    assert places.acquire("registration")
