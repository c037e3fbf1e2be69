"""Who is using the UI: an admin token exchanged once for a signed session cookie.

The cookie holds the admin token's row id (never its secret), a session id, its CSRF
token and the login time; it is signed with a key derived from ``AAMI_SECRET_KEY`` by
HMAC under a fixed label, so the key that signs agent JWTs is never used as-is for
anything else. A signed cookie alone stays valid until it expires, so every session is
also registered in Redis (by a hash of its id, for the cookie's lifetime) and logging
out deletes it: a copy of the cookie taken before is worthless after. Every request
re-reads the token row too, so revoking the token ends its UI sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Flask, g, request, session
from flask.sessions import SecureCookieSessionInterface

from server.api import auth
from server.api.auth import ADMIN
from server.db import db_session
from server.errors import Forbidden
from server.extensions import redis_client
from server.models import AdminToken, utcnow
from server.services import audit as audit_service
from server.ui import csrf

COOKIE_NAME = "aami_ui_session"
SESSION_LIFETIME = timedelta(hours=12)
# Changing the label logs everybody out; that is its only effect.
SECRET_LABEL = b"aami ui session cookie v1"
TOKEN_ID_KEY = "token_id"
SESSION_ID_KEY = "session_id"
LIVE_SESSION_PREFIX = "aami:ui:session:"


def _live_session_key(session_id: str) -> str:
    # Hashed: whoever reads Redis learns no session id (not that one would do without
    # the cookie's signature, but there is no reason to keep it).
    return LIVE_SESSION_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


def session_secret(secret_key: str) -> str:
    """The Flask secret: HMAC-SHA256 of a fixed label under the server's secret key."""
    return hmac.new(secret_key.encode(), SECRET_LABEL, hashlib.sha256).hexdigest()


class UiSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie sessions, with ``Secure`` set whenever the request came over
    HTTPS (``aami-server serve --certfile``), not only when configured."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def configure_sessions(app: Flask, secret_key: str) -> None:
    app.secret_key = session_secret(secret_key)
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
    app.session_interface = UiSessionInterface()


@dataclass(frozen=True)
class UiUser:
    token_id: str
    name: str
    role: str

    @property
    def can_write(self) -> bool:
        return self.role == ADMIN

    @property
    def actor(self) -> str:
        """The audit log's name for this user: the same as for the token's API calls."""
        return audit_service.admin_actor(self.name, self.token_id)


def find_admin_token(secret: str) -> AdminToken | None:
    """The live admin token with this secret, or None; failures count against the client
    address like the API's (429 ``RateLimited`` once it is refused)."""
    return auth.find_admin_token(secret.strip(), via="ui")


def log_in(row: AdminToken) -> UiUser:
    # A fresh session (and CSRF token) at login: nothing set before it carries over.
    session.clear()
    session.permanent = True
    session_id = secrets.token_urlsafe(32)
    redis_client().set(
        _live_session_key(session_id), row.id, ex=int(SESSION_LIFETIME.total_seconds())
    )
    session[SESSION_ID_KEY] = session_id
    session[TOKEN_ID_KEY] = row.id
    csrf.rotate()
    row.last_used_at = utcnow()
    user = UiUser(token_id=row.id, name=row.name, role=row.role)
    audit_service.record(db_session(), user.actor, "ui.login", row.id, {"role": row.role})
    db_session().commit()
    return user


def log_out() -> None:
    """End the session here and server-side: its cookie, wherever a copy is, is refused."""
    session_id = session.get(SESSION_ID_KEY)
    if isinstance(session_id, str):
        redis_client().delete(_live_session_key(session_id))
    session.clear()


def _is_live(session_id: object, token_id: str) -> bool:
    """Logged in and not logged out since: registered in Redis for this very token."""
    if not isinstance(session_id, str):
        return False  # a cookie from before sessions were registered
    stored = redis_client().get(_live_session_key(session_id))
    if isinstance(stored, bytes):
        stored = stored.decode()
    return stored == token_id


def load_user() -> UiUser | None:
    """The logged-in user of this request (cached in ``g``), or None."""
    if "ui_user" in g:
        return g.ui_user
    user = None
    token_id = session.get(TOKEN_ID_KEY)
    if isinstance(token_id, str):
        row = None
        if _is_live(session.get(SESSION_ID_KEY), token_id):
            row = db_session().get(AdminToken, token_id)
        if row is not None and row.revoked_at is None:
            user = UiUser(token_id=row.id, name=row.name, role=row.role)
        else:
            session.pop(TOKEN_ID_KEY, None)
            session.pop(SESSION_ID_KEY, None)
    g.ui_user = user
    return user


def current_user() -> UiUser:
    user = load_user()
    if user is None:  # the blueprint's before_request lets no anonymous request this far
        raise Forbidden("log in first", code="login_required")
    return user


def require_write() -> UiUser:
    """The current user if it may change things; 403 for read-only tokens."""
    user = current_user()
    if not user.can_write:
        raise Forbidden(
            f"you are logged in with the read-only token {user.name!r}: "
            "this action changes data and needs an admin token",
            code="read_only_token",
        )
    return user


def audit(action: str, subject: str, **details: Any) -> None:
    """Record the current user's change as the API does (same actions, same actor), in the
    request's session: it is committed with the change itself."""
    audit_service.record(
        db_session(), current_user().actor, action, subject, {**details, "via": "ui"}
    )
