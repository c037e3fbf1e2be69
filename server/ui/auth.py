"""Log in with an admin token (kept only as a session cookie), log out."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from server.errors import RateLimited
from server.ui import session

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str:
    """Where to go after login: a path on this server, never another site."""
    default = url_for("ui.fleet.overview")
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/ui") or "\\" in target:
        return default
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET" and session.load_user() is not None:
        return redirect(next_url)
    error = None
    if request.method == "POST":
        try:
            row = session.find_admin_token(request.form.get("token", ""))
        except RateLimited as exc:
            page = render_template("ui/login.html", error=exc.message, next_url=next_url)
            return page, 429, {"Retry-After": str(exc.retry_after)}
        if row is not None:
            session.log_in(row)
            return redirect(next_url)
        error = "That token is unknown or has been revoked."
    status = 401 if error else 200
    return render_template("ui/login.html", error=error, next_url=next_url), status


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    session.log_out()
    flash("You have been logged out.", "info")
    return redirect(url_for("ui.auth.login"))
