"""Who is using the UI: an admin token exchanged once for a signed session cookie.

The cookie holds the admin token's row id (never its secret), its CSRF token and the
login time; it is signed with a key derived from ``AAMI_SECRET_KEY`` by HMAC under a
fixed label, so the key that signs agent JWTs is never used as-is for anything else.
Every request re-reads the token row, so revoking the token ends its UI sessions too.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Flask, g, request, session
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import select

from server.api.auth import ADMIN
from server.db import db_session
from server.errors import Forbidden
from server.models import AdminToken, utcnow
from server.security.secrets import hash_secret
from server.services import audit as audit_service
from server.ui import csrf

COOKIE_NAME = "aami_ui_session"
SESSION_LIFETIME = timedelta(hours=12)
# Changing the label logs everybody out; that is its only effect.
SECRET_LABEL = b"aami ui session cookie v1"
TOKEN_ID_KEY = "token_id"


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
    """The live admin token with this secret, or None."""
    row = db_session().scalar(
        select(AdminToken).where(AdminToken.token_hash == hash_secret(secret.strip()))
    )
    if row is None or row.revoked_at is not None:
        return None
    return row


def log_in(row: AdminToken) -> UiUser:
    # A fresh session (and CSRF token) at login: nothing set before it carries over.
    session.clear()
    session.permanent = True
    session[TOKEN_ID_KEY] = row.id
    csrf.rotate()
    row.last_used_at = utcnow()
    user = UiUser(token_id=row.id, name=row.name, role=row.role)
    audit_service.record(db_session(), user.actor, "ui.login", row.id, {"role": row.role})
    db_session().commit()
    return user


def log_out() -> None:
    session.clear()


def load_user() -> UiUser | None:
    """The logged-in user of this request (cached in ``g``), or None."""
    if "ui_user" in g:
        return g.ui_user
    user = None
    token_id = session.get(TOKEN_ID_KEY)
    if isinstance(token_id, str):
        row = db_session().get(AdminToken, token_id)
        if row is not None and row.revoked_at is None:
            user = UiUser(token_id=row.id, name=row.name, role=row.role)
        else:
            session.pop(TOKEN_ID_KEY, None)
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
