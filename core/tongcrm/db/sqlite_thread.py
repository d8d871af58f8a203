"""SQLite on aiosqlite's thread with one hand-off per statement, for the ordinary SQLite engine.

Why: SQLAlchemy's aiosqlite adapter makes four round trips to aiosqlite's thread for every statement (create
the cursor, execute, fetch the rows, close the cursor), each a queue put, a thread wake-up and a callback onto
the event loop. An ingest page is some thirty statements, so ~120 hand-offs a page; on 2 loaded cores the main
thread's samples at the hand-offs' ``await`` were about a third of a sync's (py-spy, issue #22).

This connection is aiosqlite's (same thread, same queue, same ``sqlite3`` connection), but its cursor does the
whole statement in one call on that thread: the cursor is made there, the statement executed, up to
:data:`PREFETCH` rows fetched and the cursor closed when that was all of them; description, row count and last
row id are kept. ``fetch…`` then serves the rows it holds, and only a longer result (a server-side cursor
streaming an export) goes back to the thread for more, as before. Everything above the driver — SQLAlchemy's
adapter and dialect, the ORM, events, errors — is unchanged. Like :mod:`tongcrm.db.inline_sqlite` it relies on
aiosqlite's ``_execute`` and ``_conn`` and on the adapter using only ``cursor()``, ``execute``,
``executemany``, ``fetch…`` and ``close`` of a cursor: check both on an upgrade.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import aiosqlite

#: Rows a statement's single hand-off brings back; a longer result is fetched in further hand-offs.
PREFETCH = 2048
#: The log's length (pages of the database) past which a commit on these connections runs SQLite's automatic
#: checkpoint, which copies the log into the database file and syncs both inside that commit. SQLite's default
#: of 1,000 pages made every few ingest pages wait for one (3.66 s of a 20,000-order sync's 247 commits, the
#: slowest tenth 25-390 ms each); at 10,000 a page rewritten again and again is copied once per checkpoint, and
#: run alternately at load ~3.5 on 2 cores the sync took 12.7 and 13.2 s against 15.3 and 17.0 s (issue #22).
#: Durability is unchanged (a commit is in the log either way); the log reaches ~40 MiB before it is reused.
#: 40,000 pages was paired against this at 100,000 JD orders side by side and did not pay (the sync's CPU an order
#: equal or higher in every stretch; docs/architecture.md, *A longer log, paired at 100,000 orders*, ingestsq14).
WAL_AUTOCHECKPOINT_PAGES = 10_000
#: Each connection's page cache, KiB (SQLite's default is 2,000). An ingest page's transaction dirties a leaf of
#: every index it inserts into at random places (orders, ledger, lots, balances, members, identities): as the
#: indexes grow that is more pages than 2 MB hold, so at 100,000 orders SQLite spilled dirty pages into the log
#: before the commit (and wrote them again at it) and read back, a ``pread`` each, what it had just evicted —
#: ~20 read calls an order against 2 at the start (issue #22, branch ingestsq12; docs/architecture.md, *Why a
#: 100,000-order sync costs more per order*). The cache fills only as far as a connection reads, so a small
#: database keeps it small; ``tongcrm import`` asks for the same.
CACHE_KIB = 64 * 1024


class Connection(aiosqlite.Connection):
    """aiosqlite's connection whose cursors run a statement in one hand-off (:class:`Cursor`)."""

    def cursor(self) -> Cursor:  # type: ignore[override]
        return Cursor(self)


class Cursor:
    """The part of ``aiosqlite.Cursor`` SQLAlchemy's adapter uses; the ``sqlite3`` cursor lives on the thread
    only while a result is still being read."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._cursor: sqlite3.Cursor | None = None
        self._rows: deque[Any] = deque()
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await self._connection._execute(function, *args)  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------- on aiosqlite's thread

    def _open(self) -> sqlite3.Cursor:
        if self._cursor is None:
            self._cursor = self._connection._conn.cursor()
        return self._cursor

    def _settle(self, cursor: sqlite3.Cursor) -> None:
        """After a statement ran: keep what the adapter reads, and the first rows; close a finished cursor."""
        self.description = cursor.description
        more = False
        if cursor.description is not None:
            rows = cursor.fetchmany(PREFETCH)
            self._rows = deque(rows)
            more = len(rows) == PREFETCH
        else:
            self._rows = deque()
        self.rowcount = cursor.rowcount
        self.lastrowid = cursor.lastrowid
        if not more:
            self._finish()

    def _finish(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None

    def _run(self, sql: str, parameters: Any) -> None:
        cursor = self._open()
        cursor.execute(sql, parameters)
        self._settle(cursor)

    def _run_many(self, sql: str, seq_of_parameters: list[Any]) -> None:
        cursor = self._open()
        cursor.executemany(sql, seq_of_parameters)
        self._settle(cursor)

    def _more(self, size: int | None) -> list[Any]:
        if self._cursor is None:
            return []
        rows = self._cursor.fetchall() if size is None else self._cursor.fetchmany(size)
        if size is None or len(rows) < size:
            self._finish()
        return rows

    # ------------------------------------------------------------------- the adapter's side

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        await self._call(self._run, sql, parameters)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Any]) -> Cursor:
        await self._call(self._run_many, sql, list(seq_of_parameters))
        return self

    async def fetchone(self) -> Any:
        if not self._rows and self._cursor is not None:
            self._rows.extend(await self._call(self._more, PREFETCH))
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        size = self.arraysize if size is None else size
        rows = self._rows
        taken = [rows.popleft() for _ in range(min(size, len(rows)))]
        if len(taken) < size and self._cursor is not None:
            taken.extend(await self._call(self._more, size - len(taken)))
        return taken

    async def fetchall(self) -> list[Any]:
        taken = list(self._rows)
        self._rows.clear()
        if self._cursor is not None:
            taken.extend(await self._call(self._more, None))
        return taken

    async def __aiter__(self) -> AsyncIterator[Any]:
        while rows := await self.fetchmany(PREFETCH):
            for row in rows:
                yield row

    async def close(self) -> None:
        self._rows.clear()
        if self._cursor is not None:
            await self._call(self._finish)


def connector(database: str, **kwargs: Any) -> Callable[[], Any]:
    """The ``async_creator`` of the ordinary SQLite engine for a plain database file: ``kwargs`` go to
    ``sqlite3.connect`` as the aiosqlite dialect passes them."""

    def open_() -> sqlite3.Connection:
        connection: sqlite3.Connection = sqlite3.connect(database, **kwargs)
        connection.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        return connection

    async def connect() -> Connection:
        connection = Connection(open_, iter_chunk_size=64)
        connection._thread.daemon = True  # as SQLAlchemy's dialect does: the thread never holds up an exit
        try:
            await connection
        except Exception:
            # the file could not be opened (a directory, a missing folder): aiosqlite queued its thread's stop
            # with a future on this loop and did not wait, so a command that then ended its loop at once got
            # "RuntimeError: Event loop is closed" from that thread, printed after its one-line error
            await asyncio.to_thread(connection._thread.join, 5.0)
            raise
        return connection

    return connect
