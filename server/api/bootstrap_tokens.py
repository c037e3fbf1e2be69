"""Bootstrap tokens for operators: the secret is returned once, at creation."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from server.api import schemas
from server.api.audit import audit
from server.api.routing import route
from server.db import db_session
from server.models import BootstrapToken
from server.services import tokens

bp = Blueprint("bootstrap_tokens", __name__, url_prefix="/api/v1")


def describe_bootstrap_token(row: BootstrapToken, secret: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "group_id": row.group_id,
        "labels": row.labels or {},
        "max_uses": row.max_uses,
        "uses": row.uses,
        "agent_id": row.bound_agent_id,
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
        "created_at": row.created_at,
    }
    if secret is not None:
        data["token"] = secret
    return data


@route(
    bp,
    "/bootstrap-tokens",
    "GET",
    summary="List bootstrap tokens (secrets are never shown again)",
    reply=schemas.BootstrapTokenReply,
    reply_many=True,
)
def list_tokens() -> list[dict[str, Any]]:
    return [describe_bootstrap_token(t) for t in tokens.list_bootstrap_tokens(db_session(), True)]


@route(
    bp,
    "/bootstrap-tokens",
    "POST",
    summary="Create a bootstrap token; the reply's `token` is the only copy of the secret",
    body=schemas.BootstrapTokenCreate,
    reply=schemas.BootstrapTokenReply,
    status=201,
    auth="admin-write",
)
def create_token(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    if body.get("agent_id"):
        body["agent_id"] = str(body["agent_id"])
    issued = tokens.create_bootstrap_token(db_session(), **body)
    audit("bootstrap_token.create", issued.row.id, **describe_bootstrap_token(issued.row))
    db_session().commit()
    return describe_bootstrap_token(issued.row, issued.secret), 201


@route(
    bp,
    "/bootstrap-tokens/<token_id>",
    "DELETE",
    summary="Revoke a bootstrap token (by id or prefix)",
    reply=schemas.BootstrapTokenReply,
    auth="admin-write",
)
def revoke_token(token_id: str) -> dict[str, Any]:
    row = tokens.revoke_bootstrap_token(db_session(), token_id)
    audit("bootstrap_token.revoke", row.id, name=row.name, prefix=row.prefix)
    db_session().commit()
    return describe_bootstrap_token(row)
