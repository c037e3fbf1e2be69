"""CSRF protection for the UI's forms: one random token per session, checked on every POST.

The token lives in the signed session cookie and is echoed by each form as a hidden
field (or by scripts as the ``X-CSRF-Token`` header). Another site can make the browser
send the cookie, but cannot read the page to learn the token, so its forged POST fails.
"""

from __future__ import annotations

import hmac
import secrets

from flask import request, session
from markupsafe import Markup

from server.errors import Forbidden

SESSION_KEY = "csrf"
FORM_FIELD = "csrf_token"
HEADER = "X-CSRF-Token"


def csrf_token() -> str:
    """This session's token, made on first use (templates call it for every form)."""
    token = session.get(SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[SESSION_KEY] = token
    return token


def hidden_field() -> Markup:
    """The hidden input every form of the UI carries."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(FORM_FIELD, csrf_token())


def rotate() -> None:
    """A new token, for a new login: a token seen before login is not valid after it."""
    session[SESSION_KEY] = secrets.token_urlsafe(32)


def protect() -> None:
    """Refuse the current POST unless it carries this session's token."""
    expected = session.get(SESSION_KEY)
    sent = request.form.get(FORM_FIELD) or request.headers.get(HEADER) or ""
    if not isinstance(expected, str) or not expected or not sent:
        raise Forbidden(
            "the form was missing its security token: reload the page and try again",
            code="csrf_failed",
        )
    if not hmac.compare_digest(expected.encode(), sent.encode()):
        raise Forbidden(
            "the form's security token does not match this session: reload the page and "
            "try again",
            code="csrf_failed",
        )
