"""Errors the domain raises. The API maps each class to one HTTP status; the CLI prints the message.

Services raise these and never know about HTTP; the mapping lives in :mod:`tongcrm.api.problems`.
"""

from __future__ import annotations

from typing import Any

#: How much of a value the caller sent an error message echoes back (a query parameter may be any size).
SHOWN_CHARS = 40
#: How many of a request's bad names (keys, parameters) an error message lists.
SHOWN_NAMES = 5


def shown(value: str) -> str:
    """``value`` as an error message quotes it: its first :data:`SHOWN_CHARS` characters, ``…`` when cut."""
    return repr(value) if len(value) <= SHOWN_CHARS else repr(value[:SHOWN_CHARS]) + "…"


def listed(items: list[str]) -> str:
    """The first :data:`SHOWN_NAMES` of ``items`` (already quoted), and how many more there are: an error
    message about a request stays short however many bad names the request held."""
    more = len(items) - SHOWN_NAMES
    return ", ".join(items[:SHOWN_NAMES]) + (f" and {more} more" if more > 0 else "")


class TongcrmError(Exception):
    """Base class. ``message`` is safe to show to an operator; ``extra`` adds machine-readable detail.

    ``code`` and ``params`` name the refusal for a reader that speaks another language than the message (the
    console's Chinese pages: :mod:`tongcrm.console.problems` keys its sentences by ``code`` and fills them from
    ``params``). They stay out of the API's problem response, which keeps its English ``detail``: the console
    is their only reader, and an error raised without them still reaches it through ``message``."""

    status_code = 500
    title = "Internal error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        code: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}
        if code is not None:  # a subclass's own class-level code stands unless the raiser names another
            self.code = code
        self.params = params or {}


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


class Gone(TongcrmError):
    """What the request names existed and cannot be had any more (an import's kept upload that was discarded)."""

    status_code = 410
    title = "Gone"


class PreconditionFailed(TongcrmError):
    status_code = 412
    title = "Precondition failed"


class Unauthorized(TongcrmError):
    status_code = 401
    title = "Unauthorized"


class Forbidden(TongcrmError):
    status_code = 403
    title = "Forbidden"


class UnsupportedMediaType(TongcrmError):
    status_code = 415
    title = "Unsupported media type"


class TooManyRequests(TongcrmError):
    status_code = 429
    title = "Too many requests"
