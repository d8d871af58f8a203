"""Serving an ASGI app (a fake platform, tongcrm itself) on 127.0.0.1 for tests and benchmarks.

The server runs in a thread with its own event loop, on a free port, and stops when the block ends.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve_in_thread(app: Any, *, port: int | None = None, timeout: float = 10.0) -> Iterator[str]:
    """``with serve_in_thread(app) as base_url:`` — ``base_url`` is ``http://127.0.0.1:<port>``."""
    port = port or free_port()
    # uvicorn's access log prints query strings, where some platforms carry tokens; tongcrm logs requests itself
    logging.getLogger("uvicorn.access").disabled = True
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="auto"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"test-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"test server on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
