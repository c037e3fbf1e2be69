"""Routes declared with their schemas, so one declaration validates and documents.

``route(bp, "/path", "POST", body=SomeSchema, reply=OtherSchema, ...)`` registers a view
that receives the validated body as ``body=``; the same declaration feeds the OpenAPI
document served at ``/api/v1/openapi.json``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, jsonify, request
from marshmallow import Schema, ValidationError

from server.api.admission import ALL, admitted
from server.api.auth import authenticate
from server.api.ratelimits import LIMITS
from server.api.ratelimits import enforce as enforce_rate_limit
from server.errors import BadRequest, InvalidFields


@dataclass
class RouteDoc:
    path: str
    method: str
    summary: str
    tag: str
    body: type[Schema] | None = None
    query: type[Schema] | None = None
    reply: type[Schema] | None = None
    reply_many: bool = False
    status: int = 200
    auth: str = "admin"  # admin | admin-write | agent | agent-or-admin | bootstrap | none
    extra_statuses: dict[int, str] = field(default_factory=dict)
    rate_limit: str | None = None  # a name in server.api.ratelimits.LIMITS
    admission: str = ALL  # the place it takes (server/api/admission.py)


REGISTRY: list[RouteDoc] = []


def _json_body() -> Any:
    # Content type first: werkzeug consumes a form body, which would then look empty.
    if not request.is_json:
        raise BadRequest(
            f"Content-Type must be application/json, not {request.mimetype or 'missing'!r}",
            code="unsupported_media_type",
        )
    if not request.data:
        raise BadRequest("request body is empty: send a JSON object", code="malformed_json")
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        raise BadRequest("request body is nested too deeply", code="malformed_json") from None
    if data is None:
        raise BadRequest("request body is not valid JSON", code="malformed_json")
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object", code="malformed_json")
    return data


def load_with(schema: Schema, data: Any) -> Any:
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise InvalidFields(
            "invalid fields: " + ", ".join(sorted(_flatten(exc.messages))), fields=exc.messages
        ) from None


def _flatten(messages: Any, prefix: str = "") -> list[str]:
    if isinstance(messages, dict):
        names: list[str] = []
        for key, value in messages.items():
            names.extend(_flatten(value, f"{prefix}{key}."))
        return names
    return [prefix.rstrip(".") or "body"]


def route(
    bp: Blueprint,
    path: str,
    method: str,
    *,
    summary: str,
    body: type[Schema] | None = None,
    query: type[Schema] | None = None,
    reply: type[Schema] | None = None,
    reply_many: bool = False,
    status: int = 200,
    auth: str = "admin",
    extra_statuses: dict[int, str] | None = None,
    rate_limit: str | None = None,
    admission: str = ALL,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if rate_limit is not None and rate_limit not in LIMITS:
        raise ValueError(f"unknown rate limit {rate_limit!r}: one of {sorted(LIMITS)}")
    prefix = bp.url_prefix or ""
    REGISTRY.append(
        RouteDoc(
            path=prefix + path,
            method=method.lower(),
            summary=summary,
            tag=bp.name,
            body=body,
            query=query,
            reply=reply,
            reply_many=reply_many,
            status=status,
            auth=auth,
            extra_statuses=extra_statuses or {},
            rate_limit=rate_limit,
            admission=admission,
        )
    )
    body_schema = body() if body else None
    query_schema = query() if query else None
    reply_schema = reply() if reply else None

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # Past capacity a call is refused (503) before it costs anything else.
            with admitted(admission):
                return handle(*args, **kwargs)

        def handle(*args: Any, **kwargs: Any) -> Any:
            # Counted first: a flood is refused before it costs a token lookup or a parse.
            if rate_limit is not None:
                enforce_rate_limit(rate_limit, kwargs)
            authenticate(auth, kwargs)
            if body_schema is not None:
                kwargs["body"] = load_with(body_schema, _json_body())
            if query_schema is not None:
                kwargs["query"] = load_with(query_schema, request.args.to_dict())
            result = view(*args, **kwargs)
            if reply_schema is None or isinstance(result, Response):
                return result
            data, code = result if isinstance(result, tuple) else (result, status)
            return jsonify(reply_schema.dump(data, many=reply_many)), code

        bp.add_url_rule(path, view_func=wrapper, methods=[method])
        return wrapper

    return decorate
