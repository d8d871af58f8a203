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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
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

    async def open_ahead(self, count: int, ready: Callable[[Any], Awaitable[None]]) -> int:
        """Open connections, all at once, until ``count`` are open (at most ``max_size``), each made ready by
        ``ready`` (after ``init``) before it goes idle; answers how many it opened. For a serving process's
        start-up (:func:`tongcrm.warmup.open_ahead`): the first callers then find them open. The idle connections
        already open (the rehearsal's) are made ready too: they prepared only what the rehearsal read. A
        connection whose opening or readying failed is not kept; the first failure is raised once the others
        are done."""
        wanted = max(0, min(count, self._max_size) - self._size)
        idle, self._idle = self._idle, []

        async def one(conn: Any = None) -> None:
            if conn is None:
                conn = await self._open()
            try:
                await ready(conn)
            except BaseException:
                self._release(conn, broken=True)
                raise
            self._release(conn, broken=False)

        outcomes = await asyncio.gather(
            *(one(conn) for conn in idle), *(one() for _ in range(wanted)), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return wanted

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


#: statements prepared ahead on one connection at most, and at most this share of its statement cache (asyncpg's
#: default holds 100): those a request prepares itself must not push them out, nor they those
PREPARED_AHEAD = 48


async def prepare_ahead(conn: Any, statements: Sequence[str]) -> int:
    """Prepare ``statements`` on the asyncpg connection ``conn`` into its statement cache, as its first ``fetch`` of
    each would, so that fetch finds it prepared: a round trip each now instead of in a request. Answers how many
    it prepared (none where the connection keeps no statements: behind a transaction pooler,
    :func:`tongcrm.db.engine.transaction_pooled`).

    Why (issue #22, branch tillpg16): on a connection new to them, a till's first receipt prepared each of its
    statements in turn, each a round trip with the server's parse of it on a backend whose catalog caches were
    still cold. asyncpg has no public call that fills its cache (``Connection.prepare`` makes a statement apart
    from it), so this calls the one ``fetch`` calls, ``_get_statement``, with ``fetch``'s own arguments (the
    cache key is the query, the record class and the codec choice); ``tests`` hold that a fetch after it
    prepares nothing."""
    if not getattr(conn, "_stmt_cache_enabled", False):
        return 0
    room = min(PREPARED_AHEAD, conn._stmt_cache.get_max_size() // 2)
    prepared: list[Any] = []
    for sql in dict.fromkeys(statements):
        if len(prepared) >= room:
            break
        try:
            prepared.append(await conn._get_statement(sql, None))
        except Exception as exc:
            # a statement this database refuses (compiled in this process for a table it does not have: a
            # plugin not migrated here, a test's own table) is simply not prepared ahead; the connection, in
            # no transaction, is as good as before, and the others still are
            if not _is_postgres_error(exc):
                raise
            continue
    await plan_ahead(conn, prepared)
    return len(prepared)


async def plan_ahead(conn: Any, prepared: Sequence[Any]) -> int:
    """Have the server plan each of the ``prepared`` statements (asyncpg's statement states, prepared on
    ``conn``) once, generically, without running it: ``EXPLAIN EXECUTE`` of each with every parameter NULL,
    under ``plan_cache_mode = force_generic_plan`` for these statements only (the connection's own mode is
    restored after). Answers how many were planned. Nothing is run: ``EXPLAIN`` without ``ANALYZE`` executes
    nothing (no row written, no sequence drawn).

    Why (issue #22, branch till18): preparing parses a statement, but its backend still planned it the first
    time a request ran it, with catalog caches (statistics, indexes) still cold: the statement log of the till
    benchmark's first receipts showed the quick read's first bind at 1.8-7.6 ms against ~0.9 ms after, and the
    till's card read (a point read, generic plans) at 0.6-0.8 ms against 0.05-0.1 ms. A point reader's
    connection (generic plans) keeps the plan made here, which its first read then uses; an engine connection
    (custom plans) keeps the generic plan beside them, unused unless PostgreSQL's own choice (after five custom
    plans) would have built it anyway, and its first custom plan finds the caches warm."""
    planned = 0
    if not prepared:
        return 0
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        for state in prepared:
            nulls = ", ".join(["NULL"] * len(state._get_parameters()))
            try:
                await conn.execute(f'EXPLAIN EXECUTE "{state.name}"' + (f"({nulls})" if nulls else ""))
            except Exception as exc:  # a plan the server refuses to make now is made by the first request
                if not _is_postgres_error(exc):
                    raise
                continue
            planned += 1
    finally:
        await conn.execute("RESET plan_cache_mode")
    return planned


def _is_postgres_error(exc: BaseException) -> bool:
    """The server refused the statement; the connection itself is fine."""
    import asyncpg

    return isinstance(exc, asyncpg.PostgresError)
