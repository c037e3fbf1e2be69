"""Rate limits on registration (per client address) and token refresh (per agent and address).

Counters live in Redis: two apps on the same Redis (two gunicorn workers) share them.
"""

from __future__ import annotations

import pytest
from flask import Flask

from server import create_app
from server.security import ratelimit
from server.security.proxies import client_ip
from server.settings import parse_networks
from tests.server.conftest import assert_error, new_agent_id

REGISTER = "/api/v1/bootstrap-tokens/register"


def _app(app: Flask, **settings: str) -> Flask:
    """Another app on ``app``'s data directory, so on the same database and Redis."""
    return create_app(
        {"DATA_DIR": app.extensions["aami.settings"].DATA_DIR, "LOG_LEVEL": "warning", **settings}
    )


def _register(client, token: str, address: str = "192.0.2.10", **headers: str):
    return client.post(
        REGISTER,
        json={"token": token, "hostname": "h"},
        headers=headers,
        environ_base={"REMOTE_ADDR": address},
    )


# --- the limiter -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30/1m", ratelimit.RateLimit(30, 60)),
        ("30/minute", ratelimit.RateLimit(30, 60)),
        ("600 / 1h", ratelimit.RateLimit(600, 3600)),
        ("5/10s", ratelimit.RateLimit(5, 10)),
        ("off", None),
    ],
)
def test_rate_limit_spelling(text, expected):
    assert ratelimit.parse_rate_limit(text) == expected


@pytest.mark.parametrize("text", ["30", "x/1m", "30/soon", "0/1m", "5/500ms", "-1/1m", ""])
def test_bad_rate_limit_is_refused(text):
    with pytest.raises(ValueError):
        ratelimit.parse_rate_limit(text)


def test_window_counts_and_retry_after_is_the_rest_of_the_window(app):
    client = app.extensions["aami.redis"]
    limit = ratelimit.RateLimit(2, 60)
    start = 6000.0  # a window boundary
    assert ratelimit.hit(client, "t", "a", limit, now=start + 1).allowed
    assert ratelimit.hit(client, "t", "a", limit, now=start + 2).allowed
    refused = ratelimit.hit(client, "t", "a", limit, now=start + 20.5)
    assert not refused.allowed
    assert refused.retry_after == 40  # ceil(60 - 20.5)
    assert ratelimit.hit(client, "t", "b", limit, now=start + 21).allowed  # another identity
    assert ratelimit.hit(client, "t", "a", limit, now=start + 60).allowed  # the next window
    # Every counter expires on its own: nothing piles up in Redis.
    for key in client.scan_iter(f"{ratelimit.KEY_PREFIX}:*"):
        assert 0 < client.ttl(key) <= 65


# --- registration ------------------------------------------------------------------------


def test_registration_over_the_limit_is_429_with_retry_after(app, make_bootstrap_token):
    client = _app(app, REGISTER_RATE_LIMIT="3/1m").test_client()
    token = make_bootstrap_token()
    for _ in range(3):
        assert _register(client, token).status_code == 201
    refused = _register(client, token)
    assert_error(refused, 429, "rate_limited", mentions="registrations")
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert str(retry_after) in refused.get_json()["error"]["message"]


def test_refused_registration_spends_no_token_use(app, make_bootstrap_token):
    client = _app(app, REGISTER_RATE_LIMIT="1/1m").test_client()
    assert _register(client, make_bootstrap_token()).status_code == 201
    token = make_bootstrap_token(max_uses=1)
    assert _register(client, token).status_code == 429
    assert _register(client, token, address="192.0.2.99").status_code == 201


def test_failed_registrations_count_too(app):
    """Guessing bootstrap tokens is what the limit is for."""
    client = _app(app, REGISTER_RATE_LIMIT="2/1m").test_client()
    for _ in range(2):
        assert _register(client, "aami_bt_" + "x" * 43).status_code == 401
    assert _register(client, "aami_bt_" + "x" * 43).status_code == 429


def test_addresses_are_counted_apart(app, make_bootstrap_token):
    client = _app(app, REGISTER_RATE_LIMIT="1/1m").test_client()
    token = make_bootstrap_token()
    assert _register(client, token, address="192.0.2.1").status_code == 201
    assert _register(client, token, address="192.0.2.1").status_code == 429
    assert _register(client, token, address="192.0.2.2").status_code == 201


def test_counts_are_shared_by_every_worker(app, make_bootstrap_token):
    """Two apps on one Redis, as two gunicorn workers are: one budget between them."""
    first = _app(app, REGISTER_RATE_LIMIT="2/1m").test_client()
    second = _app(app, REGISTER_RATE_LIMIT="2/1m").test_client()
    token = make_bootstrap_token()
    assert _register(first, token).status_code == 201
    assert _register(second, token).status_code == 201
    assert _register(first, token).status_code == 429
    assert _register(second, token).status_code == 429


def test_forwarded_for_is_ignored_without_trusted_proxies(app, make_bootstrap_token):
    client = _app(app, REGISTER_RATE_LIMIT="1/1m").test_client()
    token = make_bootstrap_token()
    assert _register(client, token, **{"X-Forwarded-For": "198.51.100.1"}).status_code == 201
    # A made-up address does not buy a fresh budget.
    refused = _register(client, token, **{"X-Forwarded-For": "198.51.100.2"})
    assert_error(refused, 429, "rate_limited", mentions="192.0.2.10")


def test_forwarded_for_from_a_trusted_proxy_names_the_client(app, make_bootstrap_token):
    client = _app(app, REGISTER_RATE_LIMIT="1/1m", TRUSTED_PROXIES="192.0.2.0/24").test_client()
    token = make_bootstrap_token()
    assert _register(client, token, **{"X-Forwarded-For": "198.51.100.1"}).status_code == 201
    assert _register(client, token, **{"X-Forwarded-For": "198.51.100.2"}).status_code == 201
    refused = _register(client, token, **{"X-Forwarded-For": "198.51.100.1"})
    assert_error(refused, 429, "rate_limited", mentions="198.51.100.1")


def test_limit_off_disables_it(app, make_bootstrap_token):
    client = _app(app, REGISTER_RATE_LIMIT="off").test_client()
    token = make_bootstrap_token()
    for _ in range(40):
        assert _register(client, token).status_code == 201


def test_default_registration_limit_is_30_a_minute(client, make_bootstrap_token):
    token = make_bootstrap_token()
    for _ in range(30):
        assert _register(client, token).status_code == 201
    assert _register(client, token).status_code == 429


# --- refresh -----------------------------------------------------------------------------


def test_refresh_over_the_limit_is_429_per_agent_and_address(app, make_bootstrap_token):
    client = _app(app, REFRESH_RATE_LIMIT="2/1m").test_client()

    def registered() -> dict:
        reply = client.post(
            REGISTER,
            json={"token": make_bootstrap_token(), "hostname": "h", "agent_id": new_agent_id()},
        )
        return reply.get_json()

    a, b = registered(), registered()

    def refresh(agent: dict, address: str = "192.0.2.10"):
        reply = client.post(
            f"/api/v1/agents/{agent['agent_id']}/token",
            json={"refresh_token": agent["refresh_token"]},
            environ_base={"REMOTE_ADDR": address},
        )
        if reply.status_code == 200:
            agent["refresh_token"] = reply.get_json()["refresh_token"]
        return reply

    assert refresh(a).status_code == 200
    assert refresh(a).status_code == 200
    refused = refresh(a)
    assert_error(refused, 429, "rate_limited", mentions="refreshes")
    assert int(refused.headers["Retry-After"]) >= 1
    assert refresh(b).status_code == 200  # another agent has its own budget
    assert refresh(a, address="192.0.2.11").status_code == 200  # and so has another address


def test_openapi_documents_429_on_limited_routes(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    register = spec["paths"]["/api/v1/bootstrap-tokens/register"]["post"]["responses"]
    refresh = spec["paths"]["/api/v1/agents/{agent_id}/token"]["post"]["responses"]
    assert "Retry-After" in register["429"]["headers"]
    assert "429" in refresh
    heartbeat = spec["paths"]["/api/v1/agents/{agent_id}/heartbeat"]["post"]["responses"]
    assert "429" not in heartbeat


# --- which address ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.5", "198.51.100.1", "", "203.0.113.5"),
        ("203.0.113.5", "198.51.100.1", "10.0.0.0/8", "203.0.113.5"),  # peer is no proxy
        ("10.0.0.2", "198.51.100.1", "10.0.0.0/8", "198.51.100.1"),
        # The client wrote the first entry itself; our proxies appended the rest.
        ("10.0.0.2", "1.2.3.4, 198.51.100.1, 10.0.0.3", "10.0.0.0/8", "198.51.100.1"),
        ("10.0.0.2", "garbage, 10.0.0.3", "10.0.0.0/8", "10.0.0.3"),
        ("10.0.0.2", "10.0.0.4", "10.0.0.0/8", "10.0.0.4"),  # only proxies: the farthest
        ("10.0.0.2", None, "10.0.0.0/8", "10.0.0.2"),
        ("::1", "2001:db8::7", "::1", "2001:db8::7"),
        ("10.0.0.2", "198.51.100.1:5555", "10.0.0.0/8", "198.51.100.1"),
    ],
)
def test_client_address(remote, forwarded, trusted, expected):
    assert client_ip(remote, forwarded, parse_networks(trusted)) == expected
