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

The log's checkpoints are not run by these connections' commits but by a thread of their own
(:class:`Checkpointer`): SQLite's automatic checkpoint runs inside the commit that crosses its threshold, which
here is on the loop's thread — copying the log into the database file and syncing both (with
``synchronous=NORMAL``, a WAL commit itself syncs nothing: those syncs are the checkpoint's) while every request
waits.

Use it only for units of work made of short statements; long reads belong on the ordinary engine, where SQLite
runs on aiosqlite's thread while the loop serves others.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from tongcrm.db.sqlite_thread import WAL_AUTOCHECKPOINT_PAGES

T = TypeVar("T")

#: How long a statement keeps retrying while another connection holds the write lock (as SQLite's busy timeout).
BUSY_TIMEOUT_S = 30.0
#: Statements run back to back on the loop's thread for at most about this long before other tasks get a turn.
TURN_S = 0.001
#: A checkpoint of the log is asked of the :class:`Checkpointer`'s thread once every this many commits.
CHECKPOINT_EVERY_COMMITS = 500
#: The inline connections' own automatic checkpoint, only a backstop (the checkpointer's thread not keeping up):
#: with every commit checkpointed by the thread within :data:`CHECKPOINT_EVERY_COMMITS` commits, the log restarts
#: long before it holds this many pages.
BACKSTOP_CHECKPOINT_PAGES = 4 * WAL_AUTOCHECKPOINT_PAGES
#: The checkpointer's thread closes its connection and ends after this long without a checkpoint to run.
CHECKPOINTER_IDLE_S = 10.0
_FIRST_PAUSE_S = 0.001
_LONGEST_PAUSE_S = 0.05


def busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused a statement because another connection holds the lock (retried, see the module)."""
    return "database is locked" in str(exc) or "database is busy" in str(exc)


class InlineConnection:
    """The part of ``aiosqlite.Connection`` SQLAlchemy's aiosqlite adapter uses, over an inline ``sqlite3``."""

    def __init__(self, conn: sqlite3.Connection, checkpointer: Checkpointer | None = None) -> None:
        self._conn = conn
        #: runs the log's checkpoints off the loop's thread (None: SQLite's automatic checkpoint in the commit)
        self._checkpointer = checkpointer
        #: the adapter checks this before commit/rollback (aiosqlite's "is it open")
        self._connection: sqlite3.Connection | None = conn
        #: the adapter sets the isolation level by queueing a function for aiosqlite's thread
        self._tx = _RunNow()
        #: when (``time.perf_counter``) the loop is next given a turn after a statement (:data:`TURN_S`)
        self._turn_due = 0.0
        #: the cursor :meth:`fetchall` runs statements on (made at its first)
        self._statements: sqlite3.Cursor | None = None

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
            if not busy(exc):
                raise
            result = await self._retry(call, exc)
        now = time.perf_counter()
        if now >= self._turn_due:
            await asyncio.sleep(0)
            self._turn_due = time.perf_counter() + TURN_S
        return result

    async def fetchall(self, sql: str, args: Sequence[Any], describe: bool) -> tuple[list[Any], Any]:
        """``sql``'s rows with ``args`` as :meth:`run` runs a call (busy retry, turn), on one cursor kept for
        the connection, and its ``description`` when ``describe`` (else None).

        Why (issue #22, till10): :func:`tongcrm.db.direct.rows` made a cursor and a closure per statement for
        this; a statement's rows are fetched at once, so nothing is left on the cursor for the next one."""
        cursor = self._statements
        if cursor is None:
            cursor = self._statements = self._conn.cursor()
        try:
            rows = cursor.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if not busy(exc):
                raise
            rows = await self._retry(lambda: cursor.execute(sql, args).fetchall(), exc)
        description = cursor.description if describe else None
        if time.perf_counter() >= self._turn_due:
            await asyncio.sleep(0)
            self._turn_due = time.perf_counter() + TURN_S
        return rows, description

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
                if not busy(exc):
                    raise
                error = exc
        raise error

    async def commit(self) -> None:
        await self.run(self._conn.commit)
        if self._checkpointer is not None:
            self._checkpointer.committed()

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


class Checkpointer:
    """Checkpoints one database's log on a thread of its own, for the inline connections to that file.

    Why (issue #22, Build 2): a commit that crosses SQLite's automatic checkpoint threshold runs the checkpoint
    itself, on the event loop's thread — branch tillserve saw 8.5 ms of CPU and 29-145 ms of wall time for each,
    every request in the process waiting (at SQLite's default of 1,000 pages, 10-120 ms on ~1 commit in 20). Here
    every :data:`CHECKPOINT_EVERY_COMMITS`-th commit only wakes this thread, which runs a ``PASSIVE`` checkpoint
    on a connection of its own: it copies what no reader still needs into the database file and syncs it,
    without the GIL (``sqlite3`` releases it while SQLite works) and without taking the write lock, so the
    writers and the loop go on meanwhile. What a commit made durable is unchanged: in WAL mode a committed
    transaction is in the log (a checkpoint only moves it), and a crash before a checkpoint is recovered from
    the log as before.

    The thread starts at the first checkpoint asked for and ends, closing its connection, after
    :data:`CHECKPOINTER_IDLE_S` without one (a test's short-lived engine leaves nothing behind for long)."""

    def __init__(self, database: str) -> None:
        self._database = database
        self._commits = 0
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._thread: threading.Thread | None = None
        #: checkpoints run (tests and measurements)
        self.runs = 0

    def committed(self) -> None:
        """Count a commit; every :data:`CHECKPOINT_EVERY_COMMITS`-th wakes the thread (starting it if needed)."""
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY_COMMITS:
            self._commits = 0
            self.request()

    def request(self) -> None:
        """Ask for a checkpoint now (on the thread; this returns at once)."""
        with self._lock:
            self._due.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="tongcrm-checkpoint", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                if not self._due.wait(CHECKPOINTER_IDLE_S):
                    with self._lock:
                        if not self._due.is_set():
                            self._thread = None
                            return
                self._due.clear()
                try:
                    if conn is None:
                        conn = sqlite3.connect(self._database, timeout=5, isolation_level=None)
                    # PASSIVE: never waits for, nor blocks, a writer; frames a reader still needs wait for the next
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error:
                    # the file went away or is locked by a checkpoint elsewhere: the next request tries again,
                    # and the connections' backstop checkpoint bounds the log meanwhile
                    if conn is not None:
                        conn.close()
                        conn = None
        finally:
            if conn is not None:
                conn.close()


def connector(database: str) -> Callable[[], Any]:
    """The ``async_creator`` of an engine whose connections run inline (SQLite's own busy timeout off), their
    log checkpointed by one :class:`Checkpointer` for the engine."""
    checkpointer = Checkpointer(database)

    async def connect() -> InlineConnection:
        conn = sqlite3.connect(database, timeout=0, check_same_thread=False, isolation_level=None)
        # SQLite's automatic checkpoint only as a backstop: the checkpointer's thread runs them (issue #22,
        # branch tillserve: run by a commit here, on the loop's thread, each stalled every request 10-145 ms)
        conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
        # savepoints' sub-journals in memory (branch till11): a unit of work joining a group commit
        # (tongcrm.db.held.GroupCommit) runs in a savepoint, for which SQLite copies every page it first
        # changes there; past 64 KiB (a receipt dirties ~37 pages) that copy went to a temporary file, and a
        # group of two cost more CPU a receipt than two commits (raw sqlite3, 10 indexed tables: 340 against
        # 250 µs a unit; in memory 180, and 100 in groups of eight)
        conn.execute("PRAGMA temp_store=MEMORY")
        return InlineConnection(conn, checkpointer)

    return connect
