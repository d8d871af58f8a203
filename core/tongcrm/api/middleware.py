"""Request ids, access logging and HTTP metrics: one plain ASGI layer around the whole app (see
:func:`with_request_ids`)."""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import structlog
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from tongcrm.api.hot import HotAnswer, Replay
from tongcrm.api.responses import EncodedJSON
from tongcrm.logging import get_logger
from tongcrm.metrics import HttpMetrics

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_middleware(app: ASGIApp, hot: Mapping[tuple[str, str], HotAnswer] | None = None) -> ASGIApp:
    """Give every HTTP request an id (the caller's ``X-Request-ID`` when it is safe to echo), bind it for logs,
    audit records and problem responses, return it in ``X-Request-ID``, log the request at INFO, and count it
    in the HTTP metrics (:class:`tongcrm.metrics.HttpMetrics`, by the route template litestar's router put in
    the scope). ``hot``: the answers of hot routes by method and path (see :mod:`tongcrm.api.hot`), tried before
    ``app`` (read at each request: the mapping is the app's ``state.hot_answers``); a ``POST`` answer gets a
    ``receive`` that records what it read, replayed to ``app`` when the answer leaves the request to it."""
    hot = {} if hot is None else hot
    # Bound once, when the app is built (after logging is configured): a module-level lazy logger binds
    # itself anew on every call, which this per-request line cannot afford.
    log = get_logger("tongcrm.access").bind()
    logging_requests = log.is_enabled_for(logging.INFO)
    # Unique without a system call per request: a random prefix for this process (each worker builds its own
    # app) and a counter.
    prefix = os.urandom(8).hex()
    numbers = itertools.count(1)
    metrics = HttpMetrics()
    request_ids = _request_id_var()

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:  # a plain loop: next() over a generator cost several times more
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _SAFE_ID.match(incoming) else f"{prefix}{next(numbers):016x}"
        header = (b"x-request-id", request_id.encode())
        started = time.perf_counter()
        status: dict[str, Any] = {}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        method = scope["method"]
        label = metrics.started(method)
        token = request_ids.set(request_id)
        try:
            answer = hot.get((method, scope["path"])) if hot else None
            response = None
            if answer is not None:
                if method == "GET":
                    response = await answer(scope, receive)
                else:  # the answer reads the body: litestar reads the same messages again if it falls through
                    replay = Replay(receive)
                    response = await answer(scope, replay.receive)
                    receive = replay.replay
            if response is None:
                await app(scope, receive, send_with_id)
            else:
                scope["path_template"] = scope["path"]
                if isinstance(response, EncodedJSON):
                    status["code"] = response.status_code
                    await response.send_adding(send, header)
                else:
                    await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            # no status: the app raised past its own exception handlers, and the server answers 500
            metrics.record(label, method, scope.get("path_template"), status.get("code", 500), seconds)
            if logging_requests:
                log.info(
                    "request",
                    method=method,
                    path=scope.get("path"),
                    status=status.get("code"),
                    ms=round(seconds * 1000, 2),
                )
            request_ids.reset(token)

    return middleware


def _request_id_var() -> contextvars.ContextVar[Any]:
    """The context variable structlog keeps a bound ``request_id`` in (what ``merge_contextvars`` gives every
    log line, audit record and problem response), found by binding it once in a throwaway context.

    Why: ``bind_contextvars``/``reset_contextvars`` build keyword dicts and the variable's name and look it up on
    every call; setting and resetting the variable itself is the same binding at a sixth of the cost (~3 us of a
    member lookup's ~80 in process on a loaded 2-core machine)."""
    tokens = contextvars.Context().run(structlog.contextvars.bind_contextvars, request_id=None)
    return tokens["request_id"].var


def with_request_ids(app: Litestar, hot: Mapping[tuple[str, str], HotAnswer] | None = None) -> Litestar:
    """Put :func:`request_id_middleware` around everything ``app`` does for a request, routing included.

    As a litestar middleware it would run only for requests that matched a route (an unknown path got a 404
    with no id and no access line) and it would make litestar wrap every route in a second exception
    handler. Around the app's ASGI handler (where litestar itself puts CORS) it sees every request, once.
    """
    app.asgi_handler = request_id_middleware(app.asgi_handler, hot)
    return app
