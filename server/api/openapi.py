"""The OpenAPI document, built from the same declarations and schemas that validate."""

from __future__ import annotations

import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from server.api import schemas
from server.api.routing import REGISTRY, RouteDoc, route

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

_ERROR_STATUSES = {
    400: "malformed request",
    401: "missing or bad credentials",
    403: "wrong agent or role",
    404: "not found",
    413: "request too large",
    422: "invalid fields",
}


def _operation(doc: RouteDoc) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": doc.summary, "tags": [doc.tag]}
    if doc.auth not in ("none", "bootstrap"):
        operation["security"] = [{"bearer": []}]
    parameters: list[dict[str, Any]] = [
        {"in": "path", "name": name, "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"<(\w+)>", doc.path)
    ]
    if doc.query:
        parameters.append({"in": "query", "schema": doc.query})
    if parameters:
        operation["parameters"] = parameters
    if doc.body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": doc.body}},
        }
    responses: dict[str, Any] = {}
    error = {"content": {"application/json": {"schema": schemas.ErrorReply}}}
    if doc.reply:
        schema: Any = doc.reply
        if doc.reply_many:
            schema = {"type": "array", "items": doc.reply}
        body = {"content": {"application/json": {"schema": schema}}}
        responses[str(doc.status)] = {"description": "success", **body}
        for code, text in doc.extra_statuses.items():
            content = body if code < 300 else error if code >= 400 else {}
            responses[str(code)] = {"description": text, **content}
    else:
        responses[str(doc.status)] = {"description": "success"}
    for code, text in _ERROR_STATUSES.items():
        responses.setdefault(str(code), {"description": text, **error})
    if doc.method != "get":
        # Any write can meet an existing row or lose a race with a concurrent one.
        responses.setdefault(
            "409", {"description": "conflicts with the current state: see the message", **error}
        )
    responses.setdefault(
        "503",
        {"description": "database or Redis unavailable, or the server at capacity "
         "(server_busy): retry after Retry-After", **error},
    )
    if doc.rate_limit:
        responses["429"] = {
            "description": "rate limited: retry after the number of seconds in Retry-After",
            "headers": {
                "Retry-After": {
                    "description": "seconds until the rate-limit window ends",
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
            **error,
        }
    operation["responses"] = responses
    return operation


def build_spec() -> dict[str, Any]:
    spec = APISpec(
        title="AAMI config-server",
        version="1",
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    paths: dict[str, dict[str, Any]] = {}
    for doc in REGISTRY:
        paths.setdefault(re.sub(r"<(\w+)>", r"{\1}", doc.path), {})[doc.method] = _operation(doc)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


@route(bp, "/openapi.json", "GET", summary="This document (OpenAPI 3)", auth="none")
def openapi_document() -> ResponseReturnValue:
    return jsonify(build_spec())
