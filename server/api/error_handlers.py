"""Every error leaves as ``{"error": {"code", "message"}}`` with a fitting status."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from server.api.routing import allowed_methods
from server.errors import AamiError, RateLimited, ServiceUnavailable

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_fields",
    429: "rate_limited",
}


def _reply(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(AamiError)
    def domain_error(exc: AamiError) -> tuple[Response, int]:
        response = jsonify(exc.to_body())
        if isinstance(exc, RateLimited | ServiceUnavailable):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response, exc.status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc: RequestEntityTooLarge) -> tuple[Response, int]:
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return _reply(413, "payload_too_large", f"request body is larger than {limit} bytes")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        if status >= 500:
            log.error("http error", extra={"status": status, "description": exc.description})
        response, _ = _reply(status, _HTTP_CODES.get(status, "error"), exc.description or exc.name)
        # Keep the headers the status needs (Allow on a 405), not the HTML content type.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        if status == 405:
            response.headers["Allow"] = allowed_methods()
        return response, status

    @app.errorhandler(IntegrityError)
    def integrity_error(exc: IntegrityError) -> tuple[Response, int]:
        # Two requests raced to create the same row: the loser retries and sees the winner.
        log.info("integrity conflict", extra={"error": str(exc.orig)})
        return _reply(409, "conflict", "the request conflicted with a concurrent change: retry it")

    @app.errorhandler(OperationalError)
    def database_down(exc: OperationalError) -> tuple[Response, int]:
        log.error("database unavailable", extra={"error": str(exc.orig)})
        response, status = _reply(503, "database_unavailable", "the database is unavailable")
        response.headers["Retry-After"] = "5"
        return response, status

    @app.errorhandler(PoolTimeout)
    def database_busy(exc: PoolTimeout) -> tuple[Response, int]:
        # Every pooled connection stayed in use past the pool's timeout: overload, which
        # the client should meet with backoff (503), not a bug (500).
        log.error("database connection pool exhausted", extra={"error": str(exc)})
        response, status = _reply(503, "database_busy", "the database is busy: retry later")
        response.headers["Retry-After"] = "5"
        return response, status

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    def redis_down(exc: redis.RedisError) -> tuple[Response, int]:
        log.error("redis unavailable", extra={"error": str(exc)})
        response, status = _reply(503, "redis_unavailable", "the queue (Redis) is unavailable")
        response.headers["Retry-After"] = "5"
        return response, status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return _reply(500, "internal_error", "internal error: the server logged the details")
