"""What the HTTP benchmarks share: an app factory served in processes of its own, as ``tongcrm serve`` serves
(so the load generator never competes with the server for a GIL), and a light HTTP/1.1 keep-alive client.

The client is hand-written rather than httpx because the load generator shares the machine's cores with the
server: it must cost as little as possible per request (httpx spent more CPU per request than a bare endpoint).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
from tongcrm.testing.servers import free_port

HERE = Path(__file__).resolve().parent


class Served(str):
    """The base URL of a served app, with the supervisor's process id (for :func:`cpu_seconds`)."""

    pid: int


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by process ``pid`` and every live process below it: the serving
    processes' own work, which — unlike requests per second — hardly moves with other work on a shared machine."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {pid}, True
    while grew:
        below = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    return sum(times.get(p, 0.0) for p in tree)


@contextmanager
def serve(factory: str, env: Mapping[str, str], *, workers: int = 1) -> Iterator[Served]:
    """Serve ``module:function`` (a module beside this one) from ``workers`` processes; yields the base URL."""
    port = free_port()
    code = (
        "import sys; from tongcrm.serving import AppSpec, run_workers; "
        f"sys.exit(run_workers(AppSpec({factory!r}), '127.0.0.1', {port}, {workers}))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env={
            **os.environ,
            **env,
            "PYTHONPATH": os.pathsep.join(filter(None, (str(HERE), os.environ.get("PYTHONPATH")))),
        },
        cwd=str(HERE),
    )
    base = Served(f"http://127.0.0.1:{port}")
    base.pid = proc.pid
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base + "/health", timeout=1)  # any answer will do: the bare apps have no /health
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{factory} did not start serving") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


class KeepAlive:
    """One HTTP/1.1 connection, one request at a time (as a till or a wrk connection uses it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str) -> None:
        self._reader = reader
        self._writer = writer
        self._head = head

    @classmethod
    async def open(cls, base: str, headers: Mapping[str, str]) -> KeepAlive:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = f"Host: {host}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return cls(reader, writer, head)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if body is None:
            self._writer.write(f"{method} {path} HTTP/1.1\r\n{self._head}\r\n".encode())
        else:
            self._writer.write(
                f"{method} {path} HTTP/1.1\r\n{self._head}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self._reader.readexactly(length)

    def close(self) -> None:
        self._writer.close()


def p99_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def stack() -> str:
    """The server stack the figures were measured on (``tongcrm.serving`` picks it), for the report."""
    import uvicorn
    from tongcrm.serving import server_stack

    chosen = server_stack()
    return f"uvicorn {uvicorn.__version__} http={chosen.http} loop={chosen.loop}"


def load() -> str:
    """The machine's load averages when the figure was taken: other work on its cores skews every figure."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"
