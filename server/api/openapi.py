"""The OpenAPI document, built from the same declarations and schemas that validate."""

from __future__ import annotations

import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin, resolver
from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from marshmallow import fields

from server.api import schemas
from server.api.fields import Duration, duration_pattern
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
        {
            "in": "path",
            "name": name,
            "required": True,
            "schema": {"type": "string", "pattern": NO_NUL},
        }
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
        "414",
        {"description": "the URL is longer than the server reads (answered by gunicorn, "
         "before the API, so not as JSON)"},
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


# What every string the API takes must satisfy beyond its own rules: no NUL (PostgreSQL
# cannot store it; server.api.storable refuses it). Lone surrogates cannot be written in
# a JSON Schema pattern; the API refuses them all the same.
NO_NUL = "^[^\\u0000]*$"


def _enforced_rules(
    converter: Any, field: fields.Field, ret: dict[str, Any], **_: Any
) -> dict[str, Any]:
    """The rules the fields enforce that apispec leaves out of the document, so that a
    request valid by the document is one the API accepts (schemathesis checks both ways).

    Runs for every field of every schema, those other modules add included.
    """
    if isinstance(field, Duration):
        alternatives: list[dict[str, Any]] = [
            {"type": "number", "minimum": field.minimum, "maximum": field.maximum},
            {"type": "string", "pattern": duration_pattern(field.minimum, field.maximum)},
        ]
        if field.allow_none:
            alternatives.append({"type": "null"})
        for key in ("type", "example"):
            ret.pop(key, None)
        return {"anyOf": alternatives, "examples": ["30s"]}
    # (``ret`` may hold lists from a field's metadata: replaced here, never changed in place.)
    for key in ("oneOf", "anyOf"):
        if key in ret:
            # Alternatives written in a field's metadata: their strings are held to it too.
            ret[key] = [
                {"pattern": NO_NUL, **alternative}
                if alternative.get("type") == "string"
                else alternative
                for alternative in ret[key]
            ]
    if ret.pop("nullable", False):
        # OpenAPI 3.0's spelling, in a field's metadata; 3.1 says it with the type "null".
        key = "oneOf" if "oneOf" in ret else "anyOf"
        if key in ret:
            ret[key] = [*ret[key], {"type": "null"}]
        elif "type" in ret:
            ret["type"] = [ret["type"], "null"]
    if isinstance(field, fields.String) and "pattern" not in ret and "format" not in ret:
        return {"pattern": NO_NUL}
    if type(field) is fields.Raw:
        # Any JSON value; a string at the top is held to the same rule as every other.
        return {"anyOf": [{"not": {"type": "string"}}, {"type": "string", "pattern": NO_NUL}]}
    if isinstance(field, fields.Dict):
        rules: dict[str, Any] = {}
        # apispec writes a Length on a Dict as a string's min/maxLength: it counts keys.
        for length, count in (("minLength", "minProperties"), ("maxLength", "maxProperties")):
            if length in ret:
                rules[count] = ret.pop(length)
        if field.key_field is not None:
            rules["propertyNames"] = converter.field2property(field.key_field)
        return rules
    return {}


def build_spec() -> dict[str, Any]:
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="AAMI config-server",
        version="1",
        # 3.1: JSON Schema 2020-12, which can state rules 3.0 cannot (propertyNames).
        openapi_version="3.1.0",
        plugins=[plugin],
    )
    assert plugin.converter is not None
    plugin.converter.add_attribute_function(_enforced_rules)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    paths: dict[str, dict[str, Any]] = {}
    for doc in REGISTRY:
        paths.setdefault(re.sub(r"<(\w+)>", r"{\1}", doc.path), {})[doc.method] = _operation(doc)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    _add_schema_rules(document["components"]["schemas"])
    return document


def _add_schema_rules(components: dict[str, Any]) -> None:
    """Rules across fields (``openapi_rules`` on a schema class), which no field states."""
    for doc in REGISTRY:
        for schema in (doc.body, doc.query, doc.reply):
            rules = getattr(schema, "openapi_rules", None)
            name = resolver(schema) if schema is not None else None
            if rules and name in components:
                components[name].update(rules)


@route(bp, "/openapi.json", "GET", summary="This document (OpenAPI 3)", auth="none")
def openapi_document() -> ResponseReturnValue:
    return jsonify(build_spec())
