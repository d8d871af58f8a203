"""A few asyncpg connections kept open for point reads.

asyncpg's pool costs about 21 µs of CPU to acquire and release a connection (a shield, a timeout and the
holder's bookkeeping, measured on the two-core CI machine), a third of what the read it serves costs. Point
reads need none of that: they run one statement in autocommit and never change the session, so a connection
is good again as soon as its statement returns. :class:`ConnectionKeeper` is a list of idle connections, a
count of open ones and a queue of callers waiting for one.

A connection is thrown away rather than reused when anything but a PostgreSQL error ended its statement:
a cancelled statement, a lost socket or a protocol error may leave it mid-exchange.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

#: how long :meth:`ConnectionKeeper.close` waits for an idle connection to say goodbye
CLOSE_TIMEOUT_S = 5.0


class ReaderClosed(RuntimeError):
    """The keeper was closed while a caller waited for a connection, or after."""


class ConnectionKeeper:
    """Up to ``max_size`` asyncpg connections to ``dsn``, opened when first needed and set up by ``init``."""

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int,
        init: Callable[[Any], Awaitable[None]],
        server_settings: Mapping[str, str],
    ) -> None:
        self._dsn = dsn
        self._max_size = max_size
        self._init = init
        self._server_settings = dict(server_settings)
        self._idle: list[Any] = []
        #: connections open or being opened (idle ones included)
        self._size = 0
        #: callers waiting; each is given a connection, or None to try again (a place came free)
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A connection for one statement; it goes back when the block ends (or is thrown away, see above)."""
        conn = await self._acquire()
        try:
            yield conn
        except BaseException as exc:
            self._release(conn, broken=not _is_postgres_error(exc))
            raise
        self._release(conn, broken=False)

    async def _acquire(self) -> Any:
        while True:
            if self._closed:
                raise ReaderClosed("the point reader is closed")
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    return conn
                self._size -= 1
            if self._size < self._max_size:
                return await self._open()
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except asyncio.CancelledError:
                # cancelled after it was handed what it waited for: pass that on
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    given = waiter.result()
                    if given is None:
                        self._hand_on(None)
                    else:
                        self._release(given, broken=False)
                raise
            if conn is not None:
                return conn

    async def _open(self) -> Any:
        import asyncpg  # type: ignore[import-untyped]

        self._size += 1
        try:
            conn = await asyncpg.connect(self._dsn, server_settings=self._server_settings)
            try:
                await self._init(conn)
            except BaseException:
                conn.terminate()
                raise
        except BaseException:
            self._size -= 1
            self._hand_on(None)
            raise
        return conn

    def _release(self, conn: Any, *, broken: bool) -> None:
        if broken or self._closed or conn.is_closed():
            if not conn.is_closed():
                conn.terminate()
            self._size -= 1
            self._hand_on(None)
            return
        if not self._hand_on(conn):
            self._idle.append(conn)

    def _hand_on(self, given: Any) -> bool:
        """Gives ``given`` (a connection, or None: a place to open one) to the first caller still waiting."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(given)
                return True
        return False

    async def close(self) -> None:
        """Closes the idle connections; those in use are closed when their statement ends."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ReaderClosed("the point reader was closed"))
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        for conn in idle:
            try:
                await conn.close(timeout=CLOSE_TIMEOUT_S)
            except Exception:  # a connection that cannot close politely is cut
                conn.terminate()


def _is_postgres_error(exc: BaseException) -> bool:
    """The server refused the statement; the connection itself is fine."""
    import asyncpg

    return isinstance(exc, asyncpg.PostgresError)
