"""Logging is configured here, once, by the app factory or the CLI. Library code only calls ``get_logger()``.

structlog renders JSON when stderr is not a terminal (production, CI) and a readable console otherwise; stdlib
loggers (uvicorn, SQLAlchemy) go through the same renderer so every line has one shape.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

from tongcrm.privacy.redact import redact


def _exception_text(exc_info: Any) -> str | None:
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple) or exc_info[0] is None:
        return None
    return "".join(traceback.format_exception(*exc_info))


def scrub(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Render an exception as a plain traceback (code, never local variables) and pass every text of the line
    through :func:`tongcrm.privacy.redact.redact`: a driver's error quoting a bound value, a number or a key
    that slipped into a message, do not reach the log."""
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        text = _exception_text(exc_info)
        if text:
            event_dict["exception"] = text
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict


#: What :func:`configure_logging` was last called with (JSON or not, the level); ``None`` before: a sync's
#: fetching child process logs the same way (:mod:`tongcrm.ingest.fetcher`).
_configured: tuple[bool, str] | None = None


def configured() -> tuple[bool, str] | None:
    return _configured


class _CurrentStderr:
    """The process's stderr at each write (a test's capture or a CLI runner may have swapped ``sys.stderr``
    since): where tongcrm's lines go before :func:`configure_logging` names a stream."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _renderer(json: bool) -> structlog.types.Processor:
    return structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)


def configure_default() -> None:
    """tongcrm's lines before an entry point configured logging (a CLI command that does not, a test, a program
    importing tongcrm): scrubbed as configured ones are, on stderr — structlog's own default prints to stdout,
    where a command's data goes (``tongcrm messages in-doubt`` prints one line a message for scripts) and where a
    test's CLI runner, capturing a command in another thread, caught a line the test's own requests logged.
    Leaves alone a structlog another program configured before importing tongcrm."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            scrub,
            _renderer(json=False),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )


def configure_logging(*, json: bool | None = None, level: str = "INFO") -> None:
    global _configured  # configured once per process, by its entry point
    if json is None:
        json = not sys.stderr.isatty()
    _configured = (json, level)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # ``scrub`` formats exceptions itself: structlog's console default would print every frame's local
    # variables (request bodies, mobiles, keys) with a traceback
    tail: list[structlog.types.Processor] = [structlog.processors.StackInfoRenderer(), scrub]

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.getLevelName(level))
    # uvicorn's own logging config (applied by any uvicorn.Config built without ``log_config=None``) gives its
    # loggers handlers of their own that bypass the scrubbing renderer: route them through the root handler again
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers = []
        uvicorn_logger.propagate = True
    # uvicorn's access log prints full query strings (some platforms put tokens there); tongcrm logs requests
    logging.getLogger("uvicorn.access").disabled = True

    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger


configure_default()
