"""Routes declared with their schemas, so one declaration validates and documents.

``route(bp, "/path", "POST", body=SomeSchema, reply=OtherSchema, ...)`` registers a view
that receives the validated body as ``body=``; the same declaration feeds the OpenAPI
document served at ``/api/v1/openapi.json``.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, has_request_context, jsonify, request
from flask.blueprints import BlueprintSetupState
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import BaseConverter, Map
from werkzeug.routing import ValidationError as NotThisRoute

from server.api.admission import ALL, admitted
from server.api.auth import authenticate
from server.api.ratelimits import LIMITS
from server.api.ratelimits import enforce as enforce_rate_limit
from server.api.storable import (
    may_hold_unstorable,
    unstorable_reason,
    unstorable_strings,
)
from server.errors import BadRequest, InvalidFields, NotFound


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


class PathParameter(BaseConverter):
    """A path parameter that never claims a path a fixed route owns.

    werkzeug matches ``DELETE /bootstrap-tokens/register`` to ``/bootstrap-tokens/<token_id>``
    (revoking a token called "register"). Refused here, that method gets a 405 instead.
    """

    def to_python(self, value: str) -> str:
        if has_request_context() and request.path in _fixed_routes(self.map):
            raise NotThisRoute()
        return value


_FIXED_ROUTES: weakref.WeakKeyDictionary[Map, dict[str, frozenset[str]]] = (
    weakref.WeakKeyDictionary()
)


def _fixed_routes(url_map: Map) -> dict[str, frozenset[str]]:
    """The methods of each path that has no parameter. First asked at the first request,
    when every route has been added; kept as long as the app's map lives."""
    found = _FIXED_ROUTES.get(url_map)
    if found is None:
        routes: dict[str, set[str]] = {}
        for rule in url_map.iter_rules():
            if not rule.arguments:
                routes.setdefault(rule.rule, set()).update(rule.methods or ())
        found = _FIXED_ROUTES[url_map] = {path: frozenset(m) for path, m in routes.items()}
    return found


def allowed_methods() -> str:
    """``Allow`` for the requested path: what it serves, as the OpenAPI document says.

    werkzeug's own answer (for a 405 and an OPTIONS) adds the methods of parameter routes
    that look like they match, such as DELETE on ``/bootstrap-tokens/register``.
    """
    fixed = _fixed_routes(current_app.url_map)
    if request.path in fixed:
        methods: Iterable[str] = fixed[request.path]
    else:
        adapter = current_app.create_url_adapter(request)
        methods = adapter.allowed_methods() if adapter is not None else ()
    return ", ".join(sorted({*methods, "OPTIONS"}))


def _options_reply() -> Response:
    return Response(status=200, headers={"Allow": allowed_methods()})


def _register_converter(state: BlueprintSetupState) -> None:
    state.app.url_map.converters.setdefault(PATH_CONVERTER, PathParameter)


PATH_CONVERTER = "param"


def _json_body() -> Any:
    # Content type first: werkzeug consumes a form body, which would then look empty.
    if not request.is_json:
        raise BadRequest(
            f"Content-Type must be application/json, not {request.mimetype or 'missing'!r}",
            code="unsupported_media_type",
        )
    raw = request.get_data()
    _refuse_cut_stream(raw)
    if not raw:
        raise BadRequest("request body is empty: send a JSON object", code="malformed_json")
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        raise BadRequest("request body is nested too deeply", code="malformed_json") from None
    if data is None:
        raise BadRequest("request body is not valid JSON", code="malformed_json")
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object", code="malformed_json")
    if may_hold_unstorable(raw):
        refuse_unstorable(unstorable_strings(data))
    return data


def _refuse_cut_stream(raw: bytes) -> None:
    """413 for a streamed (chunked) body over the limit.

    With no Content-Length to refuse up front, werkzeug stops reading at the limit and hands
    over the first MAX_CONTENT_LENGTH bytes as if they were the whole body: the cut JSON
    would be reported as malformed. One more byte from the server's stream tells a body
    that merely reached the limit from one that went past it.
    """
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        if request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()


def refuse_unstorable(found: Iterable[tuple[tuple[str, ...], str]]) -> None:
    """422 naming every field whose text the database cannot store (lone surrogate, NUL).

    Fields are named by dotted path (``results.0.output``): flat, because an object can be
    named for a bad key of its own and for a bad value inside it at once.
    """
    fields: dict[str, list[str]] = {}
    for path, reason in found:
        fields.setdefault(".".join(path) or "body", []).append(reason)
    if fields:
        raise InvalidFields(
            f"invalid fields: {', '.join(fields)}: text the server cannot store", fields=fields
        )


def _check_query(args: dict[str, str]) -> dict[str, str]:
    found = []
    for name, value in args.items():
        if (reason := unstorable_reason(name)) is not None:
            # Named escaped: the reply must not carry the character it refuses.
            found.append(((ascii(name)[1:-1],), f"the parameter name {reason}"))
        elif (reason := unstorable_reason(value)) is not None:
            found.append(((name,), reason))
    refuse_unstorable(found)
    return args


def _check_path(path_args: dict[str, Any]) -> None:
    # Nothing is stored under such a name, and looking it up would fail in PostgreSQL.
    for name, value in path_args.items():
        reason = unstorable_reason(value) if isinstance(value, str) else None
        if reason is not None:
            raise NotFound(f"no such {name.removesuffix('_id')}: its {name} {reason}")


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
            if request.method == "OPTIONS":
                return _options_reply()
            # Past capacity a call is refused (503) before it costs anything else.
            with admitted(admission):
                return handle(*args, **kwargs)

        def handle(*args: Any, **kwargs: Any) -> Any:
            # Counted first: a flood is refused before it costs a token lookup or a parse.
            if rate_limit is not None:
                enforce_rate_limit(rate_limit, kwargs)
            _check_path(kwargs)
            authenticate(auth, kwargs)
            if body_schema is not None:
                kwargs["body"] = load_with(body_schema, _json_body())
            if query_schema is not None:
                kwargs["query"] = load_with(query_schema, _check_query(request.args.to_dict()))
            result = view(*args, **kwargs)
            if reply_schema is None or isinstance(result, Response):
                return result
            data, code = result if isinstance(result, tuple) else (result, status)
            return jsonify(reply_schema.dump(data, many=reply_many)), code

        bp.record_once(_register_converter)
        rule = re.sub(r"<(\w+)>", rf"<{PATH_CONVERTER}:\1>", path)
        # OPTIONS answered here rather than by Flask, whose Allow is werkzeug's (above).
        bp.add_url_rule(
            rule, view_func=wrapper, methods=[method, "OPTIONS"], provide_automatic_options=False
        )
        return wrapper

    return decorate
