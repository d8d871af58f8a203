"""RFC 9457 problem details for every failure. Clients never see a stack trace; the log has it, under the
request id the response carries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from tongcrm.api.inputs import MAX_ID, MAX_ID_STATED
from tongcrm.errors import TongcrmError
from tongcrm.logging import get_logger

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
#: The longest ``instance`` a problem carries (characters of the percent-encoded path).
MAX_INSTANCE = 256
#: What stays unescaped in ``instance``: RFC 3986's path characters (pchar and ``/``); a ``%`` of the decoded
#: path is escaped like the rest.
_PATH_SAFE = "/!$&'()*+,;=:@-._~"
#: ``opt`` key of a route that serves files from a directory (the console's static files): its 404 is a file
#: missing under a route that exists, so it says "no such file" rather than "no such route".
FILES_OPT = "serves_files"


def instance_of(path: str) -> str:
    """The ``instance`` of a problem: the request's path, percent-encoded, without its query, at most
    :data:`MAX_INSTANCE` characters.

    RFC 9457 makes ``instance`` a URI reference identifying the occurrence, and its own example is the path of
    the resource the request addressed; the request id next to it tells occurrences apart. The path comes
    decoded from the server, so it is encoded again (a path with a space or 会员 would not be a URI reference);
    the query is left out (it may carry a mobile or a token, and the client has it); and a long path is cut, at
    a whole character, so that a 60 KB path cannot make a 60 KB error."""
    encoded = quote(path, safe=_PATH_SAFE)
    if len(encoded) <= MAX_INSTANCE:
        return encoded
    pieces, size = [], 0
    for char in path:  # whole characters, so that no escape and no UTF-8 sequence is cut in two
        piece = quote(char, safe=_PATH_SAFE)
        if size + len(piece) > MAX_INSTANCE:
            break
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)


def problem_body(path: str, status: int, title: str, detail: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The body of a problem response to a request for ``path``, with the request id bound for the request (a
    hot answer writes its refusals from this too, so both paths answer the same bytes)."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance_of(path),
    }
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    return body


def problem(
    request: Request[Any, Any, Any],
    status: int,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    body = problem_body(request.scope["path"], status, title, detail, extra)
    out = dict(headers or {})
    if "retry_after" in extra:
        out["Retry-After"] = str(int(extra["retry_after"]))
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=out)


def handle_domain_error(request: Request[Any, Any, Any], exc: TongcrmError) -> Response[dict[str, Any]]:
    if exc.status_code >= 500:
        log.error("request failed", error=exc.message, error_type=type(exc).__name__)
    return problem(request, exc.status_code, exc.title, exc.message, **exc.extra)


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    title = _TITLES.get(status, "Error")
    extra: dict[str, Any] = {}
    detail = exc.detail
    if isinstance(exc, ValidationException):
        title = "Invalid request"
        if exc.extra:
            extra["errors"] = exc.extra = (
                [_id_bound(_missing_body(e)) for e in exc.extra] if isinstance(exc.extra, list) else exc.extra
            )
            detail = "; ".join(_describe(e) for e in exc.extra) if isinstance(exc.extra, list) else detail
    if isinstance(exc, NotFoundException):
        # litestar's router (or the console's static files) found nothing at this path; every "not found" of a
        # resource the API knows is a domain NotFound, which says what is missing
        handler = request.scope.get("route_handler")
        if handler is not None and handler.opt.get(FILES_OPT):
            detail = f"no such file: {request.method} {instance_of(request.scope['path'])}"
        else:
            detail = _no_route(request.method, request.scope["path"], exc)
    allow = (exc.headers or {}).get("allow")
    if status == 405 and allow:
        # RFC 9110 wants Allow on a 405; litestar's router sets it on the exception, not on our response
        detail = f"{request.method} is not allowed here; this path accepts {allow}"
    if status >= 500:
        log.error("request failed", error=exc.detail, status=status)
        detail = "internal error"
    return problem(request, status, title, detail, headers=exc.headers, **extra)


def _no_route(method: str, path: str, exc: NotFoundException) -> str:
    """The ``detail`` of a 404 no handler answered: no route has this path, or one has it but a segment is not
    of the type its parameter takes (litestar's router refuses ``/api/members/abc`` as it refuses ``/nosuch``,
    chaining the ``ValueError`` of the failed conversion). The path is quoted as ``instance`` quotes it."""
    where = f"{method} {instance_of(path)}"
    cause = exc.__cause__
    if isinstance(cause, ValueError) and not isinstance(cause, HTTPException):
        return (
            f"no route matches {where}: a path segment is not of the type its route takes "
            "(ids are whole numbers); the routes are listed in the OpenAPI document at /schema/openapi.json"
        )
    return f"no such route: {where}; the routes are listed in the OpenAPI document at /schema/openapi.json"


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error", error_type=type(exc).__name__)
    return problem(
        request,
        HTTP_500_INTERNAL_SERVER_ERROR,
        "Internal error",
        "The server failed to handle this request; the request id identifies it in the logs.",
    )


def _missing_body(error: Any) -> Any:
    """litestar reports a request without the body its handler takes as a ``KeyError`` of the body's
    parameter, ``{"message": "'data'", "key": "data", "source": "body"}``: say what is wrong instead."""
    if isinstance(error, dict) and error.get("source") == "body" and error.get("message") == "'data'":
        return {**error, "message": "a JSON body is required"}
    return error


def _id_bound(error: Any) -> Any:
    """A parameter over the id bound is refused by litestar as ``Expected `int` <= 9223372036854774784``,
    which an integrator takes for a double's rounding of 2^63 - 1: say that it is the bound, and why."""
    if isinstance(error, dict) and str(error.get("message", "")).endswith(f"<= {MAX_ID}"):
        return {**error, "message": f"{error['message'][: -len(str(MAX_ID))]}{MAX_ID_STATED}"}
    return error


def _describe(error: Any) -> str:
    if isinstance(error, dict):
        key = error.get("key")
        message = error.get("message", "invalid")
        return f"{key}: {message}" if key else str(message)
    return str(error)


_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Unprocessable request",
    429: "Too many requests",
}

exception_handlers: dict[type[Exception] | int, Any] = {
    TongcrmError: handle_domain_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
