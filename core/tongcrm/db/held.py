"""A writing unit of work on one connection it holds for its life, its transaction sent on the driver.

Why (issue #22, Build 2): a till's checkout is a handful of statements run straight on the driver
(:mod:`tongcrm.db.direct`), but the ORM session around them — ``session.begin()``, the session's connection
(a pool checkout, a ``Connection``, its ``begin``), ``session.commit()`` (flush, the session transaction's
commit, the connection's close), each behind a greenlet — cost ~300-450 µs of CPU per unit of work on SQLite's
inline writer and ~580 µs on PostgreSQL, against 7 µs / ~100 µs for ``BEGIN``, a statement and ``COMMIT`` on the
bare driver (measured in session 14, branch tillcore).

:func:`held_unit` checks a connection out once (one ``Connection`` over it, in one greenlet hand-off) and:

- begins the transaction on the driver — SQLite's inline writer: ``BEGIN IMMEDIATE`` on its ``sqlite3``
  connection, with its busy retry; PostgreSQL (asyncpg): the first statement starts the adapter's transaction,
  exactly as SQLAlchemy's adapter would (:func:`tongcrm.db.direct.rows` does it);
- hands out an :class:`~sqlalchemy.ext.asyncio.AsyncSession` bound to that connection, which direct statements
  run on without the ORM beginning anything (their connection is the held one while the ORM has not begun);
- lets the ORM begin only when a service needs it (``session.execute``, a flush, ``begin_nested``, ``get``):
  the session then begins on the same connection, joining the driver's transaction — SQLAlchemy's own ``BEGIN``
  is a no-op on asyncpg until a statement runs (and its adapter's transaction is already the driver's), and on
  SQLite the engine's ``begin`` listener sends none on a driver connection already in a transaction;
- commits on the driver when the ORM never began and holds nothing to flush or chain (an audit record staged);
  otherwise through ``session.commit()`` (flush, the audit chain's ``before_commit``, the connection's commit,
  which is the same driver transaction);
- rolls back on any exception (a cancellation too) the same way round, and hands the connection back to the pool
  (a connection a failed statement invalidated is not rolled back: the pool throws it away).

What stays as the session gave it: one transaction per unit of work, all or nothing; errors raised as
SQLAlchemy's ``DBAPIError`` subclasses through its handling on this connection (a lost connection invalidated);
``before_cursor_execute`` listeners see each direct statement; values cached per transaction
(:mod:`tongcrm.db.txcache`) live for the unit of work whether or not the ORM began.

Only drivers :mod:`tongcrm.db.direct` runs statements on inline qualify (asyncpg, SQLite's inline writer):
:func:`holds` says so; other engines keep the ordinary session (``session.begin()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.util import greenlet_spawn

from tongcrm.audit import chain
from tongcrm.db import direct
from tongcrm.db.engine import is_inline_writer
from tongcrm.db.inline_sqlite import InlineConnection

_BEGIN = "BEGIN IMMEDIATE"


def holds(engine: AsyncEngine) -> bool:
    """True when ``engine``'s units of work can hold their connection (:func:`held_unit`): PostgreSQL through
    asyncpg (in a transaction, not autocommit), or SQLite through the inline writer
    (:func:`tongcrm.db.engine.create_inline_writer`)."""
    dialect = engine.dialect
    if dialect.name == "postgresql":
        return dialect.driver == "asyncpg" and "isolation_level" not in engine.get_execution_options()
    return dialect.name == "sqlite" and is_inline_writer(engine)


@asynccontextmanager
async def held_unit(engine: AsyncEngine, kept: KeptConnection | None = None) -> AsyncIterator[AsyncSession]:
    """One unit of work on one connection (see the module docstring): committed when the block ends, rolled
    back when it raises. With ``kept``, on the connection it keeps between units of work (SQLite's writer),
    else on one checked out of ``engine``'s pool for this unit and handed back after it."""
    if kept is not None:
        conn, held = await kept.take(engine)
        try:
            async with _unit(conn, held) as session:
                yield session
        finally:
            await kept.settle()
        return
    conn = await engine.connect()
    try:
        async with _unit(conn, _hold(conn)) as session:
            yield session
    finally:
        await conn.close()


@asynccontextmanager
async def _unit(conn: AsyncConnection, held: direct._Connection) -> AsyncIterator[AsyncSession]:
    if held.dialect.name == "sqlite":
        driver: InlineConnection = held.driver
        await _on_driver(held, _BEGIN, driver.run(lambda: driver._conn.execute(_BEGIN)))
    # SQLAlchemy's connection in a transaction too, sending nothing (asyncpg's BEGIN waits for a statement;
    # SQLite's begin listener sees the driver's): an error's handling then never "autorollbacks" it, and
    # the ORM joins it, its commit and rollback the connection's (join_transaction_mode="control_fully")
    held.sync.begin()
    session = AsyncSession(bind=conn, expire_on_commit=False, join_transaction_mode="control_fully")
    session.info[direct.HELD] = held
    try:
        yield session
        await _commit(session, held)
    except BaseException:
        await _rollback(conn, session, held)
        raise
    finally:
        # what the ORM loaded is detached, as a closed session's is (its transaction ended above, so this
        # sends nothing)
        if session.sync_session.identity_map:
            session.sync_session.expunge_all()


class KeptConnection:
    """One connection of SQLite's inline writer kept checked out between writing units of work, which take
    turns on it (the counter's writer turn, :meth:`tongcrm.counter.CounterService.unit_of_work`: one at a time,
    as SQLite has one writer anyway).

    Why (issue #22, Build 2): a held unit of work still cost ~125 µs of CPU on the inline writer, most of it the
    pool's checkout and check-in of its connection (each in a greenlet hand-off, with the pool's events and its
    reset on return: a ``ROLLBACK`` on the driver). Kept, a unit of work costs its ``BEGIN IMMEDIATE``, its
    statements and its ``COMMIT`` on the driver and nothing around them.

    Between units of work the connection is in no transaction (neither the driver's nor SQLAlchemy's): a unit
    that committed or rolled back on the driver ends SQLAlchemy's side of it without a statement (there is
    nothing left to undo); one whose connection was invalidated (a lost file), or whose transaction could not be
    ended, is closed — the pool throws it away — and the next unit checks out a fresh one. Only one unit of work
    may use it at a time: :meth:`take` refuses a second. :meth:`close` hands it back (the app's shutdown)."""

    def __init__(self) -> None:
        self._conn: AsyncConnection | None = None
        self._held: direct._Connection | None = None
        self._busy = False

    async def take(self, engine: AsyncEngine) -> tuple[AsyncConnection, direct._Connection]:
        """The kept connection of ``engine`` (checked out now if none is kept), for one unit of work."""
        if self._busy:
            raise RuntimeError("the kept connection is in use: writing units of work must take turns on it")
        conn, held = self._conn, self._held
        if conn is None or held is None or conn.sync_engine is not engine.sync_engine:
            await self.close()
            conn = await engine.connect()
            try:
                held = _hold(conn)
            except BaseException:
                await conn.close()
                raise
            if held.dialect.name != "sqlite":
                await conn.close()
                raise TypeError("only SQLite's writer keeps its connection between units of work")
            self._conn, self._held = conn, held
        self._busy = True
        return conn, held

    async def settle(self) -> None:
        """After a unit of work: keep the connection for the next one when its transaction ended cleanly, else
        close it (the pool then discards an invalidated connection)."""
        self._busy = False
        held = self._held
        if held is None:
            return
        sync = held.sync
        if not sync.invalidated and sync._nested_transaction is None and not _in_transaction(held.driver):
            transaction = sync.get_transaction()
            if transaction is None or transaction.is_active:
                if transaction is not None:
                    # the driver committed or rolled back: SQLAlchemy's side ends as its own commit ends it
                    # (inactive and off the connection), sending nothing
                    transaction._deactivate_from_connection()
                    sync._transaction = None
                return
        await self.close()

    async def close(self) -> None:
        """Hand the connection back to the pool (it rolls back whatever is left)."""
        conn, self._conn, self._held = self._conn, None, None
        if conn is not None:
            await conn.close()


#: the most units of work one group commit makes durable (SQLite's counter writer, :class:`GroupCommit`)
GROUP_MAX = 16
#: how long (s, from its ``BEGIN``) a group stays open for units of work already queued for the writer turn
GROUP_MAX_S = 0.010
_SAVEPOINT = "tongcrm_group"


class _Group:
    """One open SQLite transaction of the counter's writer and the units of work that wait for its ``COMMIT``
    (a future each: a unit cancelled while it waits cancels nobody else's)."""

    __slots__ = ("began", "conn", "held", "waiting")

    def __init__(self, conn: AsyncConnection, held: direct._Connection) -> None:
        self.conn = conn
        self.held = held
        self.began = time.monotonic()
        self.waiting: list[asyncio.Future[None]] = []


class GroupCommit:
    """SQLite's counter writer: writing units of work take turns on one kept connection, and those already
    queued for the turn while a transaction is open join it — **group commit**.

    Why (issue #22, Build 2, branch till11): a till receipt's ``COMMIT`` on SQLite writes the ~37 WAL pages the
    receipt dirtied (~200 µs of CPU, ~14 % of the receipt), most of them the rightmost leaves of the tables and
    indexes every receipt writes; receipts committed together write such a page once for the group.

    A turn (one unit of work at a time, first come first served, as SQLite has one writer):

    - the first unit of a group (the lead) begins the transaction (``BEGIN IMMEDIATE`` on the driver), exactly
      as :func:`held_unit` does on the kept connection; a unit that finds a group open (a joiner) runs in it
      under a ``SAVEPOINT`` of its own, its ORM session joining that savepoint (``create_savepoint``), so its
      failure rolls back that unit alone and is raised to it alone;
    - when a unit's work is done the group is committed at once, unless other units are queued for the turn
      already (no added wait: a lone till commits as before), the group holds fewer than :data:`GROUP_MAX` units
      and is younger than :data:`GROUP_MAX_S`; then the unit hands the turn on and waits for the commit. A lead
      that began the ORM session (or staged an audit record) commits through ``session.commit()`` — its flush
      and the audit chain's ``before_commit`` — and so ends the group alone;
    - whoever commits answers every waiting unit with the commit's outcome: no unit of work ends (no till is
      answered) before the ``COMMIT`` that makes it durable, and a failed ``COMMIT`` (or a transaction lost
      under a joiner: SQLite rolled it back, the connection invalidated) rolls the group back whole and fails
      every unit in it.

    Values cached per transaction (:mod:`tongcrm.db.txcache`, a claim's prefetched order) live in each unit's
    own session and are never seen by the next unit of the group.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        #: units of work (and :meth:`close`) waiting for the turn: a group stays open only for these
        self._queued = 0
        self._group: _Group | None = None
        self._kept = KeptConnection()
        self._closer: asyncio.Task[None] | None = None
        #: commits made and the units of work they made durable (for tests and the benchmarks' report)
        self.commits = 0
        self.committed_units = 0

    async def _turn(self) -> None:
        self._queued += 1
        try:
            await self._lock.acquire()
        finally:
            self._queued -= 1
            if not self._lock.locked() and self._queued == 0 and self._group is not None:
                # cancelled while waiting, the last one queued: the group left open for it must still commit
                self._closer = asyncio.get_running_loop().create_task(self._commit_left_open())

    async def _commit_left_open(self) -> None:
        await self._turn()
        try:
            # a failure is its units' answer (they raise it), nobody's here
            with contextlib.suppress(Exception):
                if self._group is not None:
                    await self._commit(self._group, 0)
        finally:
            self._lock.release()

    @asynccontextmanager
    async def unit(self, engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
        """One writing unit of work of the counter (see the class docstring); the block's end waits for the
        ``COMMIT`` of its group and raises its failure."""
        await self._turn()
        done: asyncio.Future[None] | None = None
        try:
            async with self._member(engine) as (session, group):
                yield session
            done = await self._after(group)
        finally:
            self._lock.release()
        if done is not None:
            await done

    @asynccontextmanager
    async def _member(self, engine: AsyncEngine) -> AsyncIterator[tuple[AsyncSession, _Group]]:
        group = self._group
        lead = group is None
        if group is None:
            conn, held = await self._kept.take(engine)
            try:
                driver: InlineConnection = held.driver
                await _on_driver(held, _BEGIN, driver.run(lambda: driver._conn.execute(_BEGIN)))
            except BaseException:
                await self._kept.settle()
                raise
            held.sync.begin()  # as _unit: SQLAlchemy's side in the transaction too, sending nothing
            group = self._group = _Group(conn, held)
        else:
            held = group.held
            try:
                held.driver._conn.execute(f"SAVEPOINT {_SAVEPOINT}")
            except BaseException as error:  # the connection is unusable: the group cannot go on
                await self._abort(group, error)
                raise
        session = AsyncSession(
            bind=group.conn,
            expire_on_commit=False,
            join_transaction_mode="control_fully" if lead else "create_savepoint",
        )
        session.info[direct.HELD] = held
        try:
            try:
                yield session, group
                if lead:
                    if _orm_began(session):
                        await session.commit()  # the whole transaction: nobody has joined the lead
                        self._group = None
                        self._count(1)
                        await self._kept.settle()
                else:
                    if _orm_began(session):
                        await session.commit()  # releases the session's savepoint, flushed and chained
                    held.driver._conn.execute(f"RELEASE {_SAVEPOINT}")
            except BaseException as error:
                await self._undo(session, group, lead, error)
                raise
        finally:
            if session.sync_session.identity_map:
                session.sync_session.expunge_all()

    def _count(self, units: int) -> None:
        self.commits += 1
        self.committed_units += units

    def _stays_open(self, group: _Group) -> bool:
        return (
            self._queued > 0
            and len(group.waiting) + 1 < GROUP_MAX
            and time.monotonic() - group.began < GROUP_MAX_S
        )

    async def _after(self, group: _Group) -> asyncio.Future[None] | None:
        """After a unit's work succeeded, still in its turn: the group committed now (None to wait for), or a
        future the unit awaits after handing the turn on, answered by the unit of its group that commits."""
        if self._group is not group:
            return None  # committed already (a lead's, through its session)
        if self._stays_open(group):
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            group.waiting.append(done)
            return done
        await self._commit(group, 1)
        return None

    async def _undo(self, session: AsyncSession, group: _Group, lead: bool, error: BaseException) -> None:
        """A unit failed: the lead's transaction is rolled back (nobody has joined it); a joiner's savepoint
        alone, unless the group's transaction itself is lost, which then fails every unit in it."""
        if self._group is not group:
            return  # pragma: no cover - ended already
        held = group.held
        if lead:
            self._group = None
            try:
                await _rollback(group.conn, session, held)
            finally:
                await self._kept.settle()
            return
        try:
            if session.sync_session.in_transaction():
                await session.rollback()  # to the session's savepoint
            conn = held.driver._conn
            if held.sync.invalidated or not conn.in_transaction:
                # the connection was thrown away, or SQLite rolled the whole transaction back (a full disk)
                raise error
            conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
            conn.execute(f"RELEASE {_SAVEPOINT}")
        except BaseException as lost:
            await self._abort(group, lost)
            return
        if not self._stays_open(group):
            # the group goes on without this unit, committed now if nobody is queued; a failure is the
            # waiting units' answer, and this unit raises its own
            with contextlib.suppress(Exception):
                await self._commit(group, 0)

    async def _commit(self, group: _Group, own: int) -> None:
        """``COMMIT`` the group on the driver (``own``: units of the caller's, not waiting), answer its units
        and settle the kept connection; a failure rolls the group back and fails them all."""
        self._group = None
        held = group.held
        driver: InlineConnection = held.driver
        try:
            await _on_driver(held, "COMMIT", driver.commit())
        except BaseException as error:
            await self._abort(group, error)
            raise
        self._count(len(group.waiting) + own)
        for done in group.waiting:
            if not done.done():
                done.set_result(None)
        await self._kept.settle()

    async def _abort(self, group: _Group, error: BaseException) -> None:
        """Roll the group's transaction back whole and fail every unit waiting in it with ``error``."""
        self._group = None
        held = group.held
        try:
            if not held.sync.invalidated:
                held.driver._conn.rollback()
        except Exception:
            if not held.sync.invalidated:
                await group.conn.invalidate()
        for done in group.waiting:
            if not done.done():
                done.set_exception(error)
        await self._kept.settle()

    async def close(self) -> None:
        """Commit a group left open and hand the kept connection back (before the engine is disposed)."""
        await self._turn()
        try:
            if self._group is not None:
                await self._commit(self._group, 0)
        finally:
            try:
                await self._kept.close()
            finally:
                self._lock.release()


def _in_transaction(driver: InlineConnection) -> bool:
    """Whether SQLite holds a transaction open on ``driver`` (a closed connection counts as one: not reusable)."""
    try:
        return bool(driver._conn.in_transaction)
    except sqlite3.ProgrammingError:
        return True


def _hold(conn: AsyncConnection) -> direct._Connection:
    sync = conn.sync_connection
    assert sync is not None
    fairy = sync.connection
    driver = fairy.driver_connection
    if sync.dialect.name == "sqlite" and not isinstance(driver, InlineConnection):
        raise TypeError("a held unit of work on SQLite needs the inline writer's connections")
    return direct._Connection(sync, sync.dialect, fairy.dbapi_connection, driver)


def _orm_began(session: AsyncSession) -> bool:
    """Whether the ORM began on the held connection, or holds something only its commit writes (pending
    objects, an audit record staged for the chain)."""
    sync = session.sync_session
    return (
        sync.in_transaction()
        or bool(sync._new or sync._deleted or sync.identity_map._modified)
        or chain.has_staged(sync)
    )


async def _commit(session: AsyncSession, held: direct._Connection) -> None:
    if _orm_began(session):
        await session.commit()  # flushes and chains, then commits the connection: the driver's transaction
        return
    if held.dialect.name == "sqlite":
        driver: InlineConnection = held.driver
        await _on_driver(held, "COMMIT", driver.commit())
        return
    adapter = held.dbapi
    if adapter._transaction is not None:  # no statement ran: nothing was begun
        await _on_driver(held, "COMMIT", adapter._call_and_discard(adapter._transaction.commit))
    # SQLAlchemy's side of it ends with the connection's close (its rollback then finds nothing to undo)


async def _rollback(conn: AsyncConnection, session: AsyncSession, held: direct._Connection) -> None:
    """Undo the unit of work. An error here is not raised over the one that ended it: the connection is
    invalidated instead, so the pool throws it away rather than hand it out in a transaction (a cancellation
    while rolling back is raised, after the same)."""
    try:
        if session.sync_session.in_transaction():
            await session.rollback()  # the connection's rollback: the driver's transaction
        elif held.sync.invalidated:
            return  # its statement's failure threw the connection away, transaction and all
        elif held.dialect.name == "sqlite":
            held.driver._conn.rollback()
        elif held.dbapi._transaction is not None:
            await held.dbapi._call_and_discard(held.dbapi._transaction.rollback)
    except BaseException as error:
        if not held.sync.invalidated:
            await conn.invalidate()
        if not isinstance(error, Exception):
            raise


async def _on_driver(held: direct._Connection, sql: str, call: Any) -> None:
    """Await ``call`` (a ``BEGIN`` or ``COMMIT`` on the driver); a failure is raised as SQLAlchemy raises it
    from its own ``begin``/``commit`` on this connection (:func:`tongcrm.db.direct.raise_as_the_session_would`)."""
    try:
        await call
    except BaseException as error:
        # in a greenlet, as SQLAlchemy handles it: a failed BEGIN finds its connection outside a transaction,
        # and SQLAlchemy's handling then rolls the connection back through the adapter, which awaits
        await greenlet_spawn(direct.raise_as_the_session_would, held, sql, [], error)
