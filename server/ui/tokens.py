"""Bootstrap tokens: list, create (the secret is shown once, on the reply page), revoke."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import MultiDict

from server.api import schemas
from server.api.bootstrap_tokens import describe_bootstrap_token
from server.api.routing import load_with
from server.db import db_session
from server.errors import InvalidFields
from server.models import BootstrapToken, utcnow
from server.services import targets as target_service
from server.services import tokens as token_service
from server.ui.session import audit, require_write

bp = Blueprint("tokens", __name__, url_prefix="/tokens")

FORM_FIELDS = ("name", "group_id", "labels", "max_uses", "expires_in", "agent_id")


def token_state(row: BootstrapToken) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= utcnow():
        return "expired"
    if row.max_uses is not None and row.uses >= row.max_uses:
        return "used up"
    return "active"


def _parse_labels(text: str) -> dict[str, str]:
    """``env=prod, dc=dc1`` (commas or new lines) into a dict; InvalidFields if malformed."""
    labels = {}
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InvalidFields(
                f"label {part!r} is not key=value", fields={"labels": ["not key=value"]}
            )
        labels[key.strip()] = value.strip()
    return labels


def form_to_body(form: MultiDict[str, str]) -> dict[str, Any]:
    """The form as the API's create payload, validated by the same schema the API uses."""
    raw: dict[str, Any] = {"name": form.get("name", "").strip()}
    for name in ("group_id", "max_uses", "expires_in", "agent_id"):
        value = form.get(name, "").strip()
        if value:
            raw[name] = value
    raw["labels"] = _parse_labels(form.get("labels", ""))
    body: dict[str, Any] = load_with(schemas.BootstrapTokenCreate(), raw)
    if body.get("agent_id"):
        body["agent_id"] = str(body["agent_id"])
    return body


def _messages(problems: Any, prefix: str = "") -> dict[str, str]:
    """Marshmallow's nested error messages as ``{"field": "message; message"}``."""
    if isinstance(problems, dict):
        found: dict[str, str] = {}
        for key, value in problems.items():
            found.update(_messages(value, f"{prefix}{key}."))
        return found
    if isinstance(problems, list | tuple):
        return {prefix.rstrip(".") or "form": "; ".join(str(p) for p in problems)}
    return {prefix.rstrip(".") or "form": str(problems)} if problems else {}


def _page(status: int = 200, **extra: Any) -> ResponseReturnValue:
    session = db_session()
    rows = token_service.list_bootstrap_tokens(session, include_revoked=True)
    states = {r.id: token_state(r) for r in rows}
    # Usable tokens first, newest first within each part.
    rows.sort(key=lambda r: r.created_at, reverse=True)
    rows.sort(key=lambda r: states[r.id] != "active")
    return (
        render_template(
            "ui/tokens.html",
            rows=rows,
            states=states,
            groups=target_service.list_groups(session),
            **extra,
        ),
        status,
    )


@bp.get("/")
def index() -> ResponseReturnValue:
    return _page()


@bp.post("/")
def create() -> ResponseReturnValue:
    """On success the reply page itself shows the secret: it is never stored, not even
    in the (signed, readable) session cookie, so it cannot be shown a second time."""
    require_write()
    form = request.form
    try:
        body = form_to_body(form)
        issued = token_service.create_bootstrap_token(db_session(), **body)
    except InvalidFields as exc:
        db_session().rollback()
        return _page(
            422, form=form, form_error=exc.message, field_errors=_messages(exc.fields)
        )
    audit("bootstrap_token.create", issued.row.id, **describe_bootstrap_token(issued.row))
    db_session().commit()
    return _page(created=issued.row, secret=issued.secret)


@bp.post("/<token_id>/revoke")
def revoke(token_id: str) -> ResponseReturnValue:
    require_write()
    row = token_service.revoke_bootstrap_token(db_session(), token_id)
    audit("bootstrap_token.revoke", row.id, name=row.name, prefix=row.prefix)
    db_session().commit()
    flash(f"Bootstrap token {row.name!r} ({row.prefix}…) is revoked.", "success")
    return redirect(url_for("ui.tokens.index"))
