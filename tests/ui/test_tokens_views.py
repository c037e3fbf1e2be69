"""The bootstrap tokens page: list, create (secret shown once), revoke (Flask test client)."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask.testing import FlaskClient

from tests.ui.fleet import ClientApi, FakeAgent, Fleet

SECRET = re.compile(r'<code class="secret" id="new-secret" data-secret>(aami_bt_[\w-]+)</code>')


def create(client: FlaskClient, csrf: str, **fields: str) -> tuple[int, str]:
    reply = client.post("/ui/tokens/", data={"csrf_token": csrf, **fields})
    return reply.status_code, reply.get_data(as_text=True)


def test_created_token_secret_is_shown_once_and_works(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    status, html = create(
        client, logged_in, name="dc2 web", group_id="web", labels="dc=dc2, tier=front",
        max_uses="2", expires_in="24h",
    )
    assert status == 200
    found = SECRET.search(html)
    assert found, html
    secret = found.group(1)
    assert '<th scope="row">dc2 web</th>' in html  # and it is listed below

    listing = client.get("/ui/tokens/").get_data(as_text=True)
    assert secret not in listing  # never again
    assert secret[:14] in listing  # but its prefix, to tell tokens apart

    entries = fleet.admin("GET", "/audit?action=bootstrap_token.create")
    [entry] = [e for e in entries if e["details"].get("via") == "ui"]  # not the fleet's
    assert entry["details"]["name"] == "dc2 web"
    assert secret not in str(entry)

    agent = FakeAgent.register(ClientApi(client), secret, "web-9")
    target = fleet.admin("GET", f"/targets/{agent.agent_id}")
    assert target["group_id"] == "web"
    assert target["labels"] == {"dc": "dc2", "tier": "front"}


def test_invalid_form_is_shown_again_with_the_problem(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    status, html = create(client, logged_in, name="x", max_uses="zero", expires_in="soon")
    assert status == 422
    assert SECRET.search(html) is None
    assert "max_uses" in html and "expires_in" in html
    assert 'value="zero"' in html  # what was typed is kept
    status, html = create(client, logged_in, name="x", labels="no-equals-sign")
    assert status == 422
    assert "is not key=value" in html


def test_unknown_group_is_refused(client: FlaskClient, logged_in: str, fleet: Fleet) -> None:
    status, html = create(client, logged_in, name="x", group_id="nope")
    assert status == 409
    assert "does not exist" in html


def test_revoke_marks_the_token_and_it_stops_working(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    _, html = create(client, logged_in, name="short-lived")
    found = SECRET.search(html)
    assert found
    rows = fleet.admin("GET", "/bootstrap-tokens")
    token_id = next(r["id"] for r in rows if r["name"] == "short-lived")

    reply = client.post(f"/ui/tokens/{token_id}/revoke", data={"csrf_token": logged_in})
    assert reply.status_code == 302
    listing = client.get("/ui/tokens/").get_data(as_text=True)
    assert f'<tr data-token-id="{token_id}" data-state="revoked"' in listing
    assert "is revoked." in listing
    [entry] = fleet.admin("GET", "/audit?action=bootstrap_token.revoke")
    assert entry["subject"] == token_id

    status, _ = ClientApi(client).call(
        "POST", "/bootstrap-tokens/register", {"token": found.group(1), "hostname": "late"}
    )
    assert status == 401


def test_read_only_users_cannot_create_or_revoke(
    client: FlaskClient, login: Callable[..., str], fleet: Fleet
) -> None:
    csrf = login("read-only")
    listing = client.get("/ui/tokens/").get_data(as_text=True)
    assert 'id="create-token"' not in listing
    assert 'data-action="revoke"' not in listing
    assert "fleet" in listing  # but they see the tokens

    status, html = create(client, csrf, name="sneaky")
    assert status == 403
    assert SECRET.search(html) is None
    token_id = fleet.admin("GET", "/bootstrap-tokens")[0]["id"]
    reply = client.post(f"/ui/tokens/{token_id}/revoke", data={"csrf_token": csrf})
    assert reply.status_code == 403
    assert [r["name"] for r in fleet.admin("GET", "/bootstrap-tokens")] == ["fleet"]
    assert fleet.admin("GET", "/bootstrap-tokens")[0]["revoked_at"] is None


def test_creating_needs_the_csrf_token(
    client: FlaskClient, logged_in: str, fleet: Fleet
) -> None:
    reply = client.post("/ui/tokens/", data={"name": "forged"})
    assert reply.status_code == 403
    assert [r["name"] for r in fleet.admin("GET", "/bootstrap-tokens")] == ["fleet"]
