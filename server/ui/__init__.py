"""The fleet status UI: server-rendered pages under ``/ui``, for people with an admin token.

One parent blueprint, ``ui``, carries what every page shares: the templates and static
files, the login check, CSRF protection on every POST, HTML error pages and security
headers. One child blueprint per resource holds the views: ``auth`` (login, logout),
``fleet`` (overview), ``targets``, ``checks`` and ``tokens`` (bootstrap tokens). The pages
poll small JSON endpoints (``/ui/fleet.json``, ``/ui/targets/<id>/state.json``) to update
in place; with scripts off they still work, a reload away from fresh.
"""

from __future__ import annotations

import logging

from flask import (
    Blueprint,
    Flask,
    Response,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from server.errors import AamiError
from server.extensions import SETTINGS
from server.ui import auth, checks, csrf, fleet, formatting, session, targets, tokens

log = logging.getLogger(__name__)

bp = Blueprint(
    "ui",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
for child in (auth.bp, fleet.bp, targets.bp, checks.bp, tokens.bp):
    bp.register_blueprint(child)

# The JSON feeds the pages poll: they answer 401 and errors in JSON, not with HTML.
LIVE_ENDPOINTS = {"ui.fleet.live", "ui.targets.live"}
PUBLIC_ENDPOINTS = {"ui.static", "ui.auth.login"}

# Scripts and styles only from this server; no frames, no form posts elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)


def init_app(app: Flask) -> None:
    """Session cookies keyed from AAMI_SECRET_KEY, the blueprints, and ``/`` -> ``/ui/``."""
    session.configure_sessions(app, app.extensions[SETTINGS].SECRET_KEY)
    app.register_blueprint(bp)
    app.add_url_rule("/", "ui_root", lambda: redirect(url_for("ui.fleet.overview")))


def _is_live() -> bool:
    return request.endpoint in LIVE_ENDPOINTS


@bp.before_request
def guard() -> ResponseReturnValue | None:
    """CSRF on every POST, then a login for everything but the login page and static files."""
    if request.endpoint == "ui.static":
        return None
    if request.method == "POST":
        csrf.protect()
    if request.endpoint in PUBLIC_ENDPOINTS or session.load_user() is not None:
        return None
    if _is_live():
        body = {"error": {"code": "login_required", "message": "log in again"}}
        return jsonify(body), 401
    return redirect(url_for("ui.auth.login", next=request.full_path.rstrip("?")))


@bp.after_request
def security_headers(response: Response) -> Response:
    if request.endpoint != "ui.static":
        # Pages carry live data and, once, token secrets: never from a cache.
        response.headers["Cache-Control"] = "no-store"
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


@bp.context_processor
def page_context() -> dict[str, object]:
    return {"user": session.load_user()}


def _error_page(status: int, title: str, message: str) -> ResponseReturnValue:
    if _is_live():
        return jsonify({"error": {"code": title, "message": message}}), status
    return render_template("ui/error.html", status=status, title=title, message=message), status


@bp.errorhandler(AamiError)
def domain_error(exc: AamiError) -> ResponseReturnValue:
    titles = {403: "Not allowed", 404: "Not found", 409: "Conflict", 422: "Invalid input"}
    return _error_page(exc.status, titles.get(exc.status, "Error"), exc.message)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> ResponseReturnValue:
    return _error_page(exc.code or 500, exc.name, exc.description or exc.name)


@bp.errorhandler(Exception)
def unexpected(exc: Exception) -> ResponseReturnValue:
    log.exception("unhandled error in the UI")
    return _error_page(500, "Server error", "Something went wrong; the server logged the details.")


TEMPLATE_FILTERS = (
    "status_label", "abstime", "ago", "clock", "duration", "iso", "interval", "number",
    "perf_items", "labels_text",
)
for name in TEMPLATE_FILTERS:
    bp.add_app_template_filter(getattr(formatting, name), name)
# A global, not context: macros imported by other templates see only globals.
bp.add_app_template_global(csrf.hidden_field, "csrf_field")
