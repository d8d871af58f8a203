"""SQLite on the event loop's own thread, for short units of work that write.

Why: aiosqlite runs every call on a thread of its own, and a statement through SQLAlchemy's aiosqlite adapter
makes three or four round trips to it (cursor, execute, fetch, close). Measured on one file: ~260 µs of CPU a
statement that ``sqlite3`` runs inline in 4 µs. A till's checkout is some 23 statements, so the hand-offs were
most of its cost.

This module gives SQLAlchemy's aiosqlite dialect a connection that looks like aiosqlite's but runs ``sqlite3``
inline (``create_async_engine(..., async_creator=...)``), so everything above the driver — the dialect, the ORM,
events — is unchanged. Two things keep the event loop responsive:

- SQLite's busy timeout is 0 here: a statement that finds the database locked by another connection (another
  process, or the app's ordinary engine) is retried after an ``asyncio.sleep`` that grows to 50 ms, up to the
  usual 30 s, instead of sleeping inside SQLite on the loop's thread. In WAL mode only taking the write lock
  (``BEGIN IMMEDIATE``) can wait, and a statement that fails busy has had no effect, so retrying it is safe.
- A statement ends with ``await asyncio.sleep(0)`` once :data:`TURN_S` has passed since this connection last
  gave the loop a turn: a long unit of work (an offline batch of receipts) lets other requests run between its
  statements, as it did when each statement awaited a thread, while a till's checkout (a dozen statements in
  well under a millisecond of CPU) no longer pays an event-loop iteration per statement (issue #22: those turns
  were most of the loop's iterations of a served receipt).

Use it only for units of work made of short statements; long reads belong on the ordinary engine, where SQLite
runs on aiosqlite's thread while the loop serves others.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from tongcrm.db.sqlite_thread import WAL_AUTOCHECKPOINT_PAGES

T = TypeVar("T")

#: How long a statement keeps retrying while another connection holds the write lock (as SQLite's busy timeout).
BUSY_TIMEOUT_S = 30.0
#: Statements run back to back on the loop's thread for at most about this long before other tasks get a turn.
TURN_S = 0.001
_FIRST_PAUSE_S = 0.001
_LONGEST_PAUSE_S = 0.05


def _busy(exc: sqlite3.OperationalError) -> bool:
    return "database is locked" in str(exc) or "database is busy" in str(exc)


class InlineConnection:
    """The part of ``aiosqlite.Connection`` SQLAlchemy's aiosqlite adapter uses, over an inline ``sqlite3``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        #: the adapter checks this before commit/rollback (aiosqlite's "is it open")
        self._connection: sqlite3.Connection | None = conn
        #: the adapter sets the isolation level by queueing a function for aiosqlite's thread
        self._tx = _RunNow()
        #: when (``time.perf_counter``) the loop is next given a turn after a statement (:data:`TURN_S`)
        self._turn_due = 0.0

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self, self._conn.cursor())

    async def run(self, call: Callable[[], T]) -> T:
        """``call`` now, retried with pauses while the database is locked; then a turn for other tasks when
        :data:`TURN_S` has passed since the last (a pause waiting for the lock is one)."""
        try:
            result = call()
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            result = await self._retry(call, exc)
        now = time.perf_counter()
        if now >= self._turn_due:
            await asyncio.sleep(0)
            self._turn_due = time.perf_counter() + TURN_S
        return result

    async def _retry(self, call: Callable[[], T], error: sqlite3.OperationalError) -> T:
        """``call`` again after growing pauses while the database is locked (``error``: the first refusal),
        until :data:`BUSY_TIMEOUT_S` has passed; then the last refusal is raised."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        pause = _FIRST_PAUSE_S
        while time.monotonic() + pause <= deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE_S)
            try:
                return call()
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                error = exc
        raise error

    async def commit(self) -> None:
        await self.run(self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kw: Any) -> None:
        self._conn.create_function(*args, **kw)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()


class InlineCursor:
    """The part of ``aiosqlite.Cursor`` the adapter uses."""

    def __init__(self, owner: InlineConnection, cursor: sqlite3.Cursor) -> None:
        self._owner = owner
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
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

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        await self._owner.run(lambda: self._cursor.execute(sql, parameters))
        return self

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Any]) -> InlineCursor:
        rows = list(seq_of_parameters)
        await self._owner.run(lambda: self._cursor.executemany(sql, rows))
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def nextset(self) -> None:
        return None

    async def close(self) -> None:
        self._cursor.close()


class _RunNow:
    """Stands in for aiosqlite's queue to its thread: runs the function at once and settles its future."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:
            future.set_exception(exc)


def connector(database: str) -> Callable[[], Any]:
    """The ``async_creator`` of an engine whose connections run inline (SQLite's own busy timeout off)."""

    async def connect() -> InlineConnection:
        conn = sqlite3.connect(database, timeout=0, check_same_thread=False, isolation_level=None)
        # The ordinary engine's checkpoint interval (tongcrm.db.sqlite_thread), not SQLite's 1,000 pages: a
        # commit here that runs the automatic checkpoint runs it on the event loop's thread, copying the log
        # into the database file and syncing both while every request waits (issue #22, branch tillserve: on
        # 8 tills, ~1 commit in 20 did, 10-120 ms each). At 10,000 pages a tenth as many commits do, and a
        # page every receipt rewrites (an index's inner pages, the outbox's tail) is copied once per checkpoint.
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        return InlineConnection(conn)

    return connect
