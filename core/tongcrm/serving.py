"""Serving an ASGI app on a socket we bind, from this process or from several worker processes.

Why we bind the listening socket ourselves: asyncio turns Nagle's algorithm off (``TCP_NODELAY``) only on
connections accepted from a socket whose protocol is ``IPPROTO_TCP``. uvicorn's multi-process mode binds its
socket with protocol 0, so its workers answer with Nagle on, and a response written in two parts (head, then
body) waits for the client's delayed ACK: about 40 ms per request on Linux. :func:`bind` asks for TCP.

Why each worker listens on its own socket (``SO_REUSEPORT``, on Linux): with one listening socket shared by
the workers, asyncio accepts every pending connection at once, so the first worker to wake takes all the
keep-alive connections that arrive together (a proxy's upstream pool, a store's tills) and the others idle. With
a socket per worker the kernel spreads new connections across them. The supervisor keeps the port bound (not
listening) so that it stays ours while workers come and go. Elsewhere the workers share one socket.

Why our own supervisor rather than uvicorn's: the job runner should run in one worker only (index 0), so each
worker builds its app from a factory that is told its index; uvicorn's workers all run one app. The supervisor
starts the workers with ``spawn`` (no state inherited from the parent's event loop), starts a new one when a
worker that was serving dies, stops them all on SIGINT/SIGTERM, and gives up — exit status 1 — when a worker
dies before it has started serving (its app would not build or its start-up failed: a configuration error
that restarting would only repeat).

Why httptools and uvloop, named explicitly: uvicorn's ``"auto"`` silently falls back to h11 and asyncio's loop
when they are missing, and on h11 a bare endpoint answered 6,000–7,000 requests/s where httptools + uvloop
answered ~16,000 on the same 2 cores (issue #22). Both are core dependencies; :func:`server_stack` still falls
back (with a warning) on a platform without wheels for them (uvloop has none on Windows), rather than refusing
to serve.

A request uvicorn cannot parse (a request line with raw UTF-8 bytes, a malformed header) never reaches the app;
uvicorn answers it a plain-text 400 itself. :func:`problem_protocol` subclasses its protocol so that this answer
is an RFC 9457 problem like every other 4xx, saying what is wrong.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Protocol

from tongcrm.logging import get_logger

log = get_logger(__name__)

#: A pause before replacing a worker that died, so that one dying over and over does not spin.
RESTART_PAUSE_SECONDS = 0.5
#: How long a stopping worker may take to finish its requests before it is killed.
STOP_GRACE_SECONDS = 15.0


class AppFactory(Protocol):
    def __call__(self, worker: int, **options: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class AppSpec:
    """Where a worker finds its app: ``"module:function"``, called as ``function(worker_index, **options)``.

    A name rather than a function, because a spawned worker imports it afresh; the options must pickle.
    """

    factory: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self, worker: int) -> Any:
        module, _, name = self.factory.partition(":")
        factory: AppFactory = getattr(importlib.import_module(module), name)
        return factory(worker, **dict(self.options))


#: Whether the kernel balances connections across sockets bound with ``SO_REUSEPORT`` (Linux does).
KERNEL_BALANCES = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
BACKLOG = 2048


def bind(host: str, port: int, *, listen: bool = True, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``IPPROTO_TCP``, so accepted connections get ``TCP_NODELAY``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _reserve(host: str, port: int) -> socket.socket:
    """Hold ``host:port`` for workers that listen with ``SO_REUSEPORT``.

    Bound without the option first, so that a port anyone else holds — another server, even one using
    ``SO_REUSEPORT`` itself — is refused here rather than silently shared; the option is set afterwards, which
    is what lets the workers bind beside it. Not listening, so the kernel hands it no connections.
    """
    sock = bind(host, port, listen=False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


@dataclass(frozen=True, slots=True)
class ServerStack:
    """The HTTP parser and event loop uvicorn is told to use (its ``http=`` and ``loop=`` settings)."""

    http: str
    loop: str


def server_stack() -> ServerStack:
    """httptools + uvloop when importable; otherwise h11 / asyncio, each fallback logged once per process."""
    http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if (http, loop) != ("httptools", "uvloop"):
        log.warning("serving without the fast stack; install httptools and uvloop", http=http, loop=loop)
    return ServerStack(http=http, loop=loop)


#: The problem a request gets when uvicorn cannot parse it (the app never sees it, so it has no request id).
UNPARSABLE_DETAIL = (
    "the request is not valid HTTP/1.1: a request target must be ASCII (percent-encode other characters, "
    "e.g. UTF-8 as %E4%BC%9A), and header names and values must be well-formed"
)


def unparsable_answer(default_headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The whole 400 response (status line, headers, problem body) for a request uvicorn could not parse; the
    connection closes after it, as uvicorn's own does."""
    body = json.dumps(
        {"type": "about:blank", "title": "Bad request", "status": 400, "detail": UNPARSABLE_DETAIL}
    ).encode()
    head = [b"HTTP/1.1 400 Bad Request"]
    head += [name + b": " + value for name, value in default_headers]
    head += [
        b"content-type: application/problem+json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def problem_protocol(http: str) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class for ``http`` (``httptools`` or ``h11``), answering a request it cannot
    parse with a problem (:func:`unparsable_answer`) instead of plain text."""
    if http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class ProblemHttpTools(HttpToolsProtocol):
            def send_400_response(self, msg: str) -> None:
                self.transport.write(unparsable_answer(self.server_state.default_headers))
                self.transport.close()

        return ProblemHttpTools
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ProblemH11(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            self.transport.write(unparsable_answer(self.server_state.default_headers))
            self.transport.close()

    return ProblemH11


#: The key of the app's state (a list of coroutine functions) a serving process awaits when it begins to stop,
#: before uvicorn waits for the requests in flight and their background work: an import run after its answer is
#: cancelled there and marked ``interrupted`` (:class:`tongcrm.bulk.api.ImportRuns`) rather than holding the stop
#: until the supervisor kills the worker, which left it ``running`` until the next start.
STOPPING_HOOKS = "on_stopping"


async def run_stopping_hooks(app: Any) -> None:
    """Await ``app``'s :data:`STOPPING_HOOKS` (a failing one is logged and the others still run)."""
    state = getattr(app, "state", None)
    hooks = state.get(STOPPING_HOOKS, ()) if state is not None else ()
    for hook in hooks:
        try:
            await hook()
        except Exception as exc:
            log.warning(
                "a stopping hook failed", hook=getattr(hook, "__qualname__", repr(hook)), error=str(exc)
            )


def run_app(app: Any, sock: socket.socket, *, on_started: Callable[[], None] | None = None) -> bool:
    """Serve ``app`` on ``sock`` in this process until SIGINT/SIGTERM; False when it failed to start.

    ``on_started`` is called once the app's start-up has completed, before the first request is served.
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and on_started is not None:
                on_started()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for server in self.servers:  # no new request starts work the hooks would miss
                server.close()
            await run_stopping_hooks(app)
            await super().shutdown(sockets=sockets)

    stack = server_stack()
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=problem_protocol(stack.http),
        loop=stack.loop,
    )
    server = Server(config)
    server.run(sockets=[sock])
    return server.started


def _worker_main(spec: AppSpec, listener: socket.socket | tuple[str, int], index: int, started: Any) -> None:
    _stop_with_parent()
    app = spec.build(index)
    sock = listener if isinstance(listener, socket.socket) else bind(*listener, reuse_port=True)
    if not run_app(app, sock, on_started=started.set):
        sys.exit(3)


def _stop_with_parent() -> None:
    """Stop this worker (gracefully, as SIGTERM does) when the supervisor dies, even by SIGKILL: an orphan
    would go on holding the port and, on Linux, taking a share of its connections."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="tongcrm-parent-watch", daemon=True).start()


def run_workers(
    spec: AppSpec, host: str, port: int, workers: int, *, on_bound: Callable[[], None] | None = None
) -> int:
    """Serve ``host:port`` from ``workers`` processes; returns the exit status for the command.

    Raises :class:`OSError` at once when the port cannot be had. ``on_bound`` is called once it is held,
    before any worker starts: ``tongcrm serve`` says "serving on" there, never before a bind that fails.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    held = _reserve(host, port) if KERNEL_BALANCES else bind(host, port)
    if on_bound is not None:
        on_bound()
    listener: socket.socket | tuple[str, int] = (host, held.getsockname()[1]) if KERNEL_BALANCES else held
    context = multiprocessing.get_context("spawn")
    procs: dict[int, BaseProcess] = {}
    started: dict[int, Any] = {}  # index → a multiprocessing Event the worker sets once it serves
    stopping = False
    failed = False

    def start(index: int) -> None:
        started[index] = context.Event()
        proc = context.Process(
            target=_worker_main,
            args=(spec, listener, index, started[index]),
            name=f"tongcrm-worker-{index}",
        )
        proc.start()
        procs[index] = proc
        log.info("worker started", worker=index, pid=proc.pid)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index in range(workers):
            start(index)
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p in procs.values()], timeout=0.5)
            for index, proc in list(procs.items()):
                if stopping or proc.is_alive():
                    continue
                if not started[index].is_set():
                    log.error("worker failed to start; stopping", worker=index, exit_code=proc.exitcode)
                    stopping = failed = True
                    break
                log.warning("worker exited; starting another", worker=index, exit_code=proc.exitcode)
                time.sleep(RESTART_PAUSE_SECONDS)
                start(index)
    finally:
        _stop(procs.values())
        held.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


def _stop(procs: Any) -> None:
    """SIGTERM (uvicorn finishes the requests in flight), then SIGKILL for any still running after the grace."""
    alive = [p for p in procs if p.is_alive()]
    for proc in alive:
        proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in alive:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            log.warning("worker did not stop in time; killing it", pid=proc.pid)
            proc.kill()
            proc.join()
