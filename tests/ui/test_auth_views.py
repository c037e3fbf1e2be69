"""Login, logout, the session cookie and CSRF protection of the UI (Flask test client)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient

from server.db import get_database
from server.services import tokens
from server.ui.session import COOKIE_NAME, session_secret
from tests.ui.conftest import csrf_from


def test_pages_redirect_to_login_when_not_logged_in(client: FlaskClient) -> None:
    for path in ("/ui/", "/ui/checks/", "/ui/tokens/", "/ui/targets/x"):
        reply = client.get(path)
        assert reply.status_code == 302, path
        assert reply.headers["Location"].startswith("/ui/login?next="), path


def test_root_redirects_to_the_overview(client: FlaskClient) -> None:
    reply = client.get("/")
    assert reply.status_code == 302
    assert reply.headers["Location"] == "/ui/"


def test_live_feed_answers_401_json_when_not_logged_in(client: FlaskClient) -> None:
    reply = client.get("/ui/fleet.json")
    assert reply.status_code == 401
    assert reply.get_json()["error"]["code"] == "login_required"


def test_static_files_need_no_login(client: FlaskClient) -> None:
    reply = client.get("/ui/static/live.js")
    assert reply.status_code == 200
    assert b"data-live-url" in reply.data
    reply.close()


def test_login_with_admin_token_sets_a_hardened_session_cookie(
    client: FlaskClient, admin_token: str
) -> None:
    reply = client.post(
        "/ui/login", data={"token": admin_token, "csrf_token": csrf_from(client)}
    )
    assert reply.status_code == 302
    assert reply.headers["Location"] == "/ui/"
    cookie = reply.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP here: a Secure cookie would never come back
    assert admin_token not in cookie  # the secret itself never leaves the login request
    page = client.get("/ui/")
    assert page.status_code == 200
    assert b"Fleet overview" in page.data
    logins = client.get(
        "/api/v1/audit?action=ui.login", headers={"Authorization": f"Bearer {admin_token}"}
    ).get_json()
    assert [(e["actor"].split(" ")[0], e["details"]) for e in logins] == [
        ("admin:ops", {"role": "admin"})
    ]


def test_session_cookie_is_secure_over_https(client: FlaskClient, admin_token: str) -> None:
    csrf = csrf_from(client)
    reply = client.post(
        "/ui/login",
        data={"token": admin_token, "csrf_token": csrf},
        base_url="https://localhost",
    )
    assert reply.status_code == 302
    assert "Secure" in reply.headers["Set-Cookie"]


def test_login_goes_back_to_the_page_asked_for(client: FlaskClient, admin_token: str) -> None:
    reply = client.post(
        "/ui/login",
        data={"token": admin_token, "csrf_token": csrf_from(client), "next": "/ui/checks/"},
    )
    assert reply.headers["Location"] == "/ui/checks/"


def test_login_never_redirects_to_another_site(app: Flask, admin_token: str) -> None:
    for target in ("https://evil.example/", "//evil.example/ui/", "/api/v1/targets"):
        client = app.test_client()
        reply = client.post(
            "/ui/login",
            data={"token": admin_token, "csrf_token": csrf_from(client), "next": target},
        )
        assert reply.headers["Location"] == "/ui/", target


def test_unknown_token_is_refused(client: FlaskClient) -> None:
    reply = client.post(
        "/ui/login", data={"token": "aami_adm_nope", "csrf_token": csrf_from(client)}
    )
    assert reply.status_code == 401
    assert b"unknown or has been revoked" in reply.data
    assert client.get("/ui/").status_code == 302


def test_revoking_the_token_ends_its_sessions(
    app: Flask, client: FlaskClient, login: Callable[..., str], admin_token: str
) -> None:
    login(token=admin_token)
    assert client.get("/ui/").status_code == 200
    with get_database(app).session() as session:
        tokens.revoke_admin_token(session, tokens.list_admin_tokens(session)[0].id)
    assert client.get("/ui/").status_code == 302


def test_logout_ends_the_session(client: FlaskClient, logged_in: str) -> None:
    reply = client.post("/ui/logout", data={"csrf_token": logged_in})
    assert reply.status_code == 302
    assert client.get("/ui/").status_code == 302


def test_post_without_csrf_token_is_refused(client: FlaskClient, logged_in: str) -> None:
    reply = client.post("/ui/logout")
    assert reply.status_code == 403
    assert b"security token" in reply.data
    assert client.get("/ui/").status_code == 200  # still logged in: the POST did nothing


def test_post_with_another_sessions_csrf_token_is_refused(
    app: Flask, client: FlaskClient, logged_in: str
) -> None:
    other = app.test_client()
    foreign = csrf_from(other)
    assert foreign != logged_in
    reply = client.post("/ui/logout", data={"csrf_token": foreign})
    assert reply.status_code == 403
    assert client.get("/ui/").status_code == 200


def test_login_itself_needs_the_csrf_token(client: FlaskClient, admin_token: str) -> None:
    reply = client.post("/ui/login", data={"token": admin_token})
    assert reply.status_code == 403
    assert client.get("/ui/").status_code == 302


def test_csrf_token_changes_at_login(
    client: FlaskClient, admin_token: str
) -> None:
    before = csrf_from(client)
    client.post("/ui/login", data={"token": admin_token, "csrf_token": before})
    assert csrf_from(client, "/ui/") != before


def test_session_key_is_derived_from_the_server_secret_not_equal_to_it(app: Flask) -> None:
    secret_key = app.extensions["aami.settings"].SECRET_KEY
    expected = hmac.new(
        secret_key.encode(), b"aami ui session cookie v1", hashlib.sha256
    ).hexdigest()
    assert app.secret_key == expected == session_secret(secret_key)
    assert app.secret_key != secret_key


def test_pages_carry_security_headers(client: FlaskClient, logged_in: str) -> None:
    reply = client.get("/ui/")
    assert reply.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in reply.headers["Content-Security-Policy"]
    assert reply.headers["X-Frame-Options"] == "DENY"


def test_api_requests_get_no_session_cookie(client: FlaskClient, admin_token: str) -> None:
    reply = client.get("/api/v1/targets", headers={"Authorization": f"Bearer {admin_token}"})
    assert reply.status_code == 200
    assert "Set-Cookie" not in reply.headers


def test_cookie_copied_before_logout_is_refused_after_it(
    app: Flask, client: FlaskClient, logged_in: str
) -> None:
    cookie = client.get_cookie(COOKIE_NAME)
    assert cookie is not None
    thief = app.test_client()
    thief.set_cookie(COOKIE_NAME, cookie.value)
    assert thief.get("/ui/").status_code == 200  # the copy works while the session lives

    client.post("/ui/logout", data={"csrf_token": logged_in})

    reply = thief.get("/ui/")
    assert reply.status_code == 302
    assert "/ui/login" in reply.headers["Location"]
