"""A worker's own HTTP endpoint: ``/health`` for the orchestrator's probe and ``/metrics`` for Prometheus.

Workers serve no API, so they get this small asyncio server rather than an app: GET only, no keys (bind it to a
private interface; it shows counts and timings, no member data). ``/health`` answers 200 while the worker can
reach its database and 503 otherwise; ``/metrics`` is this process's job metrics (the cluster-wide gauges are on
the API's ``/metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import sqlalchemy as sa

from tongcrm.jobs.runner import Runner
from tongcrm.logging import get_logger
from tongcrm.metrics import render

log = get_logger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class HealthServer:
    def __init__(self, runner: Runner, *, role: str, bind_host: str = "127.0.0.1", port: int = 0) -> None:
        self.runner = runner
        self.role = role
        self.bind_host = bind_host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; returns the port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, self.bind_host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health endpoint listening", role=self.role, port=self.port)
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing here depends on them
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?", 1)[0]) if len(parts) >= 2 else ("", "")
            status, content_type, body = await self._answer(method, path)
            head = (
                f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/metrics":
            return "200 OK", PROMETHEUS_TEXT, render(process=True)
        if path == "/health":
            database = "ok"
            try:
                async with self.runner.sessions() as session:
                    await session.execute(sa.text("SELECT 1"))
            except Exception as exc:  # the probe reports it; the worker's own loop retries
                database = f"failed: {type(exc).__name__}"
            body = {"status": "ok" if database == "ok" else "unavailable", "role": self.role}
            body |= {"worker": self.runner.worker_id, "database": database}
            status = "200 OK" if database == "ok" else "503 Service Unavailable"
            return status, "application/json", json.dumps(body).encode()
        return "404 Not Found", "text/plain", b"/health or /metrics\n"
