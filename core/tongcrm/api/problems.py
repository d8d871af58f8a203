"""RFC 9457 problem details for every failure. Clients never see a stack trace; the log has it, under the
request id the response carries."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from tongcrm.errors import TongcrmError
from tongcrm.logging import get_logger

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem(
    request: Request[Any, Any, Any], status: int, title: str, detail: str, **extra: Any
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    headers = {}
    if "retry_after" in extra:
        headers["Retry-After"] = str(int(extra["retry_after"]))
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


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
            extra["errors"] = exc.extra
            detail = "; ".join(_describe(e) for e in exc.extra) if isinstance(exc.extra, list) else detail
    if status >= 500:
        log.error("request failed", error=exc.detail, status=status)
        detail = "internal error"
    return problem(request, status, title, detail, **extra)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error", error_type=type(exc).__name__)
    return problem(
        request,
        HTTP_500_INTERNAL_SERVER_ERROR,
        "Internal error",
        "The server failed to handle this request; the request id identifies it in the logs.",
    )


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
