"""Domain errors. Each carries an HTTP status, a stable code and a message a person can act on.

Views and services raise these; one handler in ``server.api.error_handlers`` turns every one
of them into the JSON error body documented in DESIGN.md.
"""

from __future__ import annotations

from typing import Any


class AamiError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, fields: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.fields = fields

    def to_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"error": error}


class BadRequest(AamiError):
    status = 400
    code = "bad_request"


class Unauthorized(AamiError):
    status = 401
    code = "unauthorized"


class Forbidden(AamiError):
    status = 403
    code = "forbidden"


class NotFound(AamiError):
    status = 404
    code = "not_found"


class Conflict(AamiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(AamiError):
    status = 413
    code = "payload_too_large"


class InvalidFields(AamiError):
    status = 422
    code = "invalid_fields"


class RateLimited(AamiError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ServiceUnavailable(AamiError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class SettingsError(Exception):
    """A server setting is missing or invalid; raised at start-up, names the variable."""
