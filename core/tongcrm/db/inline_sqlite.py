"""SQLite point reads on the event loop's own thread.

aiosqlite runs every call on a worker thread: a lookup of one indexed row takes about nine hand-offs
(cursor, execute, fetch, close, begin, commit, pool reset…), and under load each hand-off costs more than the
query itself. A point read on SQLite in WAL mode takes microseconds and never waits for writers, so for the
hot point reads (member lookup at the service desk and the till) tongcrm runs them inline instead: this module
gives SQLAlchemy's aiosqlite dialect a connection with aiosqlite's interface whose coroutines call
:mod:`sqlite3` directly.

Use it only for reads that touch a handful of rows: anything long would hold the event loop. Writers and
every other read keep aiosqlite's thread. The short busy timeout is deliberate: a reader that cannot read at
once (only during WAL recovery) fails fast rather than stalling every request on the loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

#: A point read that cannot proceed within this time fails instead of holding the event loop.
INLINE_BUSY_TIMEOUT_S = 0.5


class _InlineCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> _InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = ()) -> _InlineCursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> _InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    async def nextset(self) -> None:
        return None

    async def setinputsizes(self, *sizes: Any) -> None:
        return None


class _CursorContext:
    """What ``aiosqlite.Connection.cursor()`` returns: awaitable and an async context manager."""

    def __init__(self, cursor: _InlineCursor) -> None:
        self._cursor = cursor

    def __await__(self) -> Any:
        async def get() -> _InlineCursor:
            return self._cursor

        return get().__await__()

    async def __aenter__(self) -> _InlineCursor:
        return self._cursor

    async def __aexit__(self, *exc: object) -> None:
        await self._cursor.close()


class _ImmediateQueue:
    """SQLAlchemy sets the isolation level through aiosqlite's request queue; run the request at once."""

    def put_nowait(self, item: tuple[Any, Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:
            future.set_exception(exc)


class InlineConnection:
    """The part of ``aiosqlite.Connection`` SQLAlchemy's aiosqlite dialect uses, without the thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._connection = conn  # aiosqlite's "still open" marker
        self._tx = _ImmediateQueue()

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> _CursorContext:
        return _CursorContext(_InlineCursor(self._conn.cursor()))

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _InlineCursor:
        return await _InlineCursor(self._conn.cursor()).execute(sql, parameters)

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        self._conn.close()

    def stop(self) -> None:
        self._conn.close()

    async def create_function(self, name: str, num_params: int, func: Callable[..., Any], **kw: Any) -> None:
        self._conn.create_function(name, num_params, func, **kw)


def inline_creator(database: str) -> Callable[[], Any]:
    """An ``async_creator`` for :func:`sqlalchemy.ext.asyncio.create_async_engine`."""

    async def connect() -> InlineConnection:
        conn = sqlite3.connect(
            database, timeout=INLINE_BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
        )
        return InlineConnection(conn)

    return connect
