"""One exception tree for slatebandit.

    SlatebanditError            500 internal
    ├── ConfigError             a setting is missing or malformed (raised at start)
    ├── InvalidInput            400 invalid_input       (names the offending field)
    ├── Unauthorized            401 unauthorized
    ├── Forbidden               403 forbidden
    ├── NotFound                404 not_found
    ├── MethodNotAllowed        405 method_not_allowed
    ├── NotAcceptable           406 not_acceptable
    ├── RequestTimeout          408 request_timeout
    ├── Conflict                409 conflict
    ├── PayloadTooLarge         413 payload_too_large
    ├── UnsupportedMediaType    415 unsupported_media_type
    ├── TooManyRequests         429 too_many_requests
    └── Unavailable             503 unavailable
        └── DatabaseUnavailable 503 database_unavailable (the database cannot be reached)

The server turns any of them into ``{"error": {"code", "message", "field"}}`` with the status
the class carries; anything else becomes a generic 500 and is logged.
"""

from __future__ import annotations


class SlatebanditError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class ConfigError(SlatebanditError):
    code = "config"


class InvalidInput(SlatebanditError):
    status = 400
    code = "invalid_input"


class Unauthorized(SlatebanditError):
    status = 401
    code = "unauthorized"


class Forbidden(SlatebanditError):
    status = 403
    code = "forbidden"


class NotFound(SlatebanditError):
    status = 404
    code = "not_found"


class MethodNotAllowed(SlatebanditError):
    status = 405
    code = "method_not_allowed"


class NotAcceptable(SlatebanditError):
    status = 406
    code = "not_acceptable"


class RequestTimeout(SlatebanditError):
    status = 408
    code = "request_timeout"


class Conflict(SlatebanditError):
    status = 409
    code = "conflict"


class PayloadTooLarge(SlatebanditError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(SlatebanditError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(SlatebanditError):
    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, field: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after  # seconds, sent as Retry-After


class Unavailable(SlatebanditError):
    status = 503
    code = "unavailable"


class DatabaseUnavailable(Unavailable):
    """The database could not be reached (refused, dropped or timed out); retry later."""

    code = "database_unavailable"
    retry_after = 1  # seconds, sent as Retry-After
