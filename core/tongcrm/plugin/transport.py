"""The HTTP transport channel clients call their platforms through: httpx's, over plain asyncio sockets.

Why (issue #22): a Taobao sync makes about one request for every twenty orders it fetches (the list calls of its
windows, ``fullinfo`` for trades the list left short), and each request went through httpcore's anyio network
backend: a cancel scope and a deadline for every read and write, and a turn of the event loop after every write
(anyio's checkpoint; httpcore writes the headers and the body apart, so two a request). In a py-spy of the
20,000-order SQLite benchmark that machinery was most of what the fetch side spent outside JSON and the
normaliser. httpcore itself (HTTP/1.1 with h11, the keep-alive pool, TLS, its errors) is unchanged: only its
network backend is replaced by :class:`AsyncioBackend`, an :class:`asyncio.Protocol` per connection that buffers
what arrives and wakes the one reader waiting for it; a read or a write that must wait is bounded by its timeout
(``asyncio.timeout``), one that need not wait costs no timer. TLS is asyncio's (``loop.start_tls``), with the
same SSL context httpx makes (certificates verified).

A client takes :func:`platform_transport` unless a test hands it a transport of its own (``httpx.MockTransport``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore
import httpx

__all__ = ["AsyncioBackend", "platform_transport"]

_SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection's side of the loop: what arrived, whether the peer is done, write pauses."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport, but not always an asyncio.Transport instance: uvloop's (the loop `tongcrm serve`
        # runs, and its in-process jobs' syncs with it) is its own class with the same methods
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport: the peer sends nothing more and HTTP/1.1 has no half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        if self.drained is None or self.drained.done():
            self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class AsyncioStream(httpcore.AsyncNetworkStream):
    """httpcore's view of one connection (see the module docstring)."""

    def __init__(self, connection: _Connection) -> None:
        self._c = connection

    # httpcore's interface passes each operation's timeout as a parameter (ASYNC109 below)
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        c = self._c
        if not c.buffer and not c.eof:
            c.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await c.waiter
            except TimeoutError:
                raise httpcore.ReadTimeout("timed out reading from the platform") from None
            finally:
                c.waiter = None
        if c.buffer:
            data = bytes(c.buffer[:max_bytes])
            del c.buffer[:max_bytes]
            return data
        if c.error is not None:
            raise httpcore.ReadError(str(c.error) or type(c.error).__name__)
        return b""  # the peer closed the connection: httpcore reads that as a disconnect

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        c = self._c
        if not buffer:
            return
        if c.transport is None or c.transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        c.transport.write(buffer)
        drained = c.drained
        if drained is not None and not drained.done():
            try:
                async with asyncio.timeout(timeout):
                    await drained
            except TimeoutError:
                raise httpcore.WriteTimeout("timed out writing to the platform") from None
        if c.error is not None:
            raise httpcore.WriteError(str(c.error) or type(c.error).__name__)

    async def aclose(self) -> None:
        if self._c.transport is not None:
            self._c.transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        c = self._c
        assert c.transport is not None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(c.transport, c, ssl_context, server_hostname=server_hostname)
        except TimeoutError:
            c.transport.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError) as exc:
            c.transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if tls is None:
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        c.transport = tls  # no isinstance check: uvloop's is not an asyncio.Transport instance either
        return self

    def get_extra_info(self, info: str) -> Any:
        c = self._c
        if info == "is_readable":  # an idle keep-alive connection the peer closed, or wrote to: not reusable
            return c.eof or bool(c.buffer)
        if c.transport is None:
            return None
        if info == "ssl_object":
            return c.transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return c.transport.get_extra_info("sockname")
        if info == "server_addr":
            return c.transport.get_extra_info("peername")
        if info == "socket":
            return c.transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on the running asyncio loop (see the module docstring)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await loop.create_connection(
                    _Connection, host, port, local_addr=(local_address, 0) if local_address else None
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            if sock is not None:
                sock.setsockopt(*option)
        return AsyncioStream(connection)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _transport, connection = await loop.create_unix_connection(_Connection, path)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {path}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return AsyncioStream(connection)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _PlatformTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` (its request and response mapping, its errors) over :class:`AsyncioBackend`.

    httpx builds its connection pool without a choice of network backend, so this lets httpx's constructor set
    the transport up as it always does, then puts in the attribute httpx's transport drives the same pool (httpx's
    default limits, the same SSL context) with our backend. The pool httpx built is dropped unused (it opened
    nothing). ``core/tests``' ``test_plugin_transport`` holds what depends on that attribute, so an httpx that
    renames it fails there, not in production."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, retries: int = 0) -> None:
        context = ssl_context or httpx.create_ssl_context()
        super().__init__(verify=context, retries=retries)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=retries,
            network_backend=AsyncioBackend(),
        )


def platform_transport(*, ssl_context: ssl.SSLContext | None = None) -> httpx.AsyncBaseTransport:
    """A keep-alive transport for a channel client's platform calls (no retries: the client decides); HTTPS
    verified against the system's authorities, or ``ssl_context``'s."""
    return _PlatformTransport(ssl_context=ssl_context, retries=0)
