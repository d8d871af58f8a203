"""Errors the domain raises. The API maps each class to one HTTP status; the CLI prints the message.

Services raise these and never know about HTTP; the mapping lives in :mod:`tongcrm.api.problems`.
"""

from __future__ import annotations

from typing import Any


class TongcrmError(Exception):
    """Base class. ``message`` is safe to show to an operator; ``extra`` adds machine-readable detail."""

    status_code = 500
    title = "Internal error"

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class ConfigError(TongcrmError):
    title = "Configuration error"


class PluginError(TongcrmError):
    title = "Plugin error"


class BadRequest(TongcrmError):
    status_code = 400
    title = "Bad request"


class Unprocessable(TongcrmError):
    status_code = 422
    title = "Unprocessable request"


class NotFound(TongcrmError):
    status_code = 404
    title = "Not found"


class Conflict(TongcrmError):
    status_code = 409
    title = "Conflict"


class PreconditionFailed(TongcrmError):
    status_code = 412
    title = "Precondition failed"


class Unauthorized(TongcrmError):
    status_code = 401
    title = "Unauthorized"


class Forbidden(TongcrmError):
    status_code = 403
    title = "Forbidden"


class TooManyRequests(TongcrmError):
    status_code = 429
    title = "Too many requests"
