"""Statements of a unit of work run straight on its connection's driver: compiled once, bound positionally.

A till's receipt is a dozen statements of one row each. Through ``session.execute`` each paid some 150-250 µs
of Python for a few µs of database work: the ORM's compile state, a cache-key walk of the statement, the
execution context, parameter processing by name, the result's metadata, the greenlet hand-offs (issue #22).
:func:`rows` skips that for a statement built once (module level, values as ``sa.bindparam``): it is compiled
once per dialect, its parameters are bound in order through the same SQLAlchemy type processors, and its
columns come back through the same result processors, so what is written and read is what ``session.execute``
would write and read. It runs in the session's own transaction, on its own connection:

- PostgreSQL (asyncpg): on the driver connection SQLAlchemy holds, inside the transaction it started (or
  starting it, exactly as its adapter would); asyncpg prepares the statement once per connection.
- SQLite through the inline writer (:mod:`tongcrm.db.inline_sqlite`): on its ``sqlite3`` connection, with its
  busy retry and its turn for other tasks.
- SQLite through the ordinary engine (:mod:`tongcrm.db.sqlite_thread`): on its ``sqlite3`` connection, in one
  hand-off to aiosqlite's thread (statement, rows and close in one call), under the adapter's lock. Run on the
  event loop's thread instead, a page's statements cost as much CPU (issue #22: 20,000 orders, 8.5 s against
  8.7 s) but could no longer overlap the next page's fetch, and took longer on a loaded machine.
- anything else (an in-memory database, aiosqlite's own connect): ``session.execute``, as before.

What stays as it was: what the ORM holds is flushed first (autoflush), listeners of ``before_cursor_execute`` see every statement (tests count round trips with
them), and a driver error goes through SQLAlchemy's handling of it on the session's connection: raised as the
:class:`~sqlalchemy.exc.DBAPIError` subclass for it (``IntegrityError`` …), so callers catch what they caught,
and a lost connection — or one whose statement was cancelled — invalidated as the session would have (not handed
back to the pool, nor committed). Rows are named tuples of the statement's column
keys (not ORM entities). A statement with list (expanding) parameters is compiled per length of its lists,
for a few lengths (a till's lists hold one item or a few); beyond those it goes through ``session.execute``.
"""

from __future__ import annotations

import functools
import operator
import sqlite3
import weakref
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.db import inline_sqlite, sqlite_thread
from tongcrm.db.dialect import VALUES_ROWS, render_values
from tongcrm.db.inline_sqlite import InlineConnection

_Processor = Callable[[Any], Any] | None
_CONNECTION_KEY = "tongcrm.db.direct.connection"
#: in ``session.info``: the connection a unit of work holds (:mod:`tongcrm.db.held`), its transaction begun on
#: the driver; statements run on it while the ORM session has not begun
HELD = "tongcrm.db.held"


@dataclass(frozen=True, slots=True)
class Plan:
    """A statement compiled for one dialect and one length of each of its list parameters (also the point
    reads' plan, :class:`tongcrm.db.point_reads.PointQuery`)."""

    sql: str
    #: per positional parameter: (its name, or None for a value the statement carries; its index in that list
    #: parameter, or None; the value carried; processor)
    binds: tuple[tuple[str | None, int | None, Any, _Processor], ...]
    #: a named tuple of the statement's columns; None for SQL text, whose columns the driver names
    row: type[tuple[Any, ...]] | None
    #: (column index, result processor) for the columns that have one
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]
    #: (position, count) of the rows of a SQLite ``VALUES`` insert (:func:`tongcrm.db.dialect.values_rows`),
    #: bound from its one flat list as it is (its values converted already); not among ``binds``
    flat: tuple[int, int] | None = None

    #: (the values of ``binds`` in one C call, positions with a processor) when every bind is a parameter by
    #: name (no list item, no value the statement carries): the usual statement (set in ``__post_init__``)
    direct: tuple[Callable[[Mapping[str, Any]], Any], tuple[tuple[int, Callable[[Any], Any]], ...]] | None = (
        field(default=None, init=False, compare=False, repr=False)
    )

    def __post_init__(self) -> None:
        # Why: a till's statements bind 5-22 values each; fetched by name one at a time in a Python loop they
        # cost more than SQLite's own binding (issue #22, till10). One ``itemgetter`` fetches them all.
        if self.binds and all(name is not None and index is None for name, index, _c, _p in self.binds):
            names = [name for name, _i, _c, _p in self.binds]
            get: Callable[[Mapping[str, Any]], Any] = operator.itemgetter(*names)
            if len(names) == 1:
                one = get
                get = lambda params: (one(params),)  # noqa: E731 - itemgetter of one name answers the value
            processed = tuple((i, p) for i, (_n, _x, _c, p) in enumerate(self.binds) if p is not None)
            object.__setattr__(self, "direct", (get, processed))

    def parameters(self, params: Mapping[str, Any]) -> list[Any]:
        if self.direct is not None:
            get, processed = self.direct
            out = list(get(params))
            for position, convert in processed:
                out[position] = convert(out[position])
        else:
            out = []
            for name, index, constant, process in self.binds:
                value = constant if name is None else params[name] if index is None else params[name][index]
                out.append(process(value) if process is not None else value)
        if self.flat is not None:
            start, count = self.flat
            values = params[VALUES_ROWS]
            if len(values) != count:
                raise ValueError(f"{len(values)} values for a VALUES list of {count}")
            out[start:start] = values
        return out

    def build(self, raw: Sequence[Any], row: type[tuple[Any, ...]]) -> tuple[Any, ...]:
        if not self.processors:
            return row(*raw)
        values = list(raw)
        for index, process in self.processors:
            values[index] = process(values[index])
        return row(*values)


@dataclass(slots=True)
class _Plans:
    """A statement's plans: its list parameters (``IN`` a list given per call) and a plan per dialect and
    length of each (their text changes with the lengths; a till's lists hold one item or a few)."""

    lists: tuple[str, ...]
    by_shape: dict[tuple[str, tuple[int, ...]], Plan]


#: statement → its plans; statements are built once, so this holds a few dozen
_PLANS: weakref.WeakKeyDictionary[Any, _Plans] = weakref.WeakKeyDictionary()
#: plans kept per statement at most (list lengths are few on a till's path; a page's go through the session)
MAX_SHAPES = 16


def plan(statement: Any, dialect: Dialect, params: Mapping[str, Any]) -> Plan | None:
    """``statement`` compiled for ``dialect`` and the lengths of its list parameters in ``params`` (once);
    None when it has more shapes than :data:`MAX_SHAPES` (it then runs through the session)."""
    plans = _PLANS.get(statement)
    compiled = None
    if plans is None:
        compiled = statement.compile(dialect=dialect)
        lists = tuple(n for n, b in compiled.binds.items() if b.expanding and b.required)
        plans = _PLANS[statement] = _Plans(lists, {})
    shape = plan_shape(dialect, plans.lists, params)
    found = plans.by_shape.get(shape)
    if found is None:
        if len(plans.by_shape) >= MAX_SHAPES:
            return None
        found = plans.by_shape[shape] = compile_plan(statement, dialect, plans.lists, params, compiled)
    return found


def planned_sql(dialect_name: str) -> list[str]:
    """The SQL of every plan kept for ``dialect_name`` (in the order they were made): what a serving process
    compiled at start-up (:mod:`tongcrm.warmup`) and since, for preparing them on connections opened ahead
    (:func:`tongcrm.warmup.open_ahead`). A few dozen: statements are built once, with few shapes each."""
    return [
        found.sql
        for plans in list(_PLANS.values())
        for (name, _lengths), found in plans.by_shape.items()
        if name == dialect_name
    ]


def plan_shape(
    dialect: Dialect, lists: tuple[str, ...], params: Mapping[str, Any]
) -> tuple[str, tuple[int, ...]]:
    """What a statement's plan is kept under: the dialect and the length of each of its list parameters. The
    usual none or one without a generator expression, which cost a point read as much as the rest of finding
    its plan."""
    if not lists:
        return dialect.name, ()
    if len(lists) == 1:
        return dialect.name, (len(params[lists[0]]),)
    return dialect.name, tuple([len(params[name]) for name in lists])


def compile_plan(
    statement: Any,
    dialect: Dialect,
    lists: tuple[str, ...],
    params: Mapping[str, Any],
    compiled: Any = None,
) -> Plan:
    """``statement``'s plan for the lengths of ``lists`` in ``params``; ``compiled``: the statement already
    compiled for ``dialect`` (its first plan), which is not compiled twice then. A SQLite ``VALUES`` insert
    (:func:`tongcrm.db.dialect.values_rows`) compiles its rows as one parameter; the plan's SQL has them
    written out (:func:`tongcrm.db.dialect.render_values`) and binds their flat list at that position."""
    if compiled is None:
        compiled = statement.compile(dialect=dialect)
    # every list expands here, one position per item: those the statement holds (``kind IN ('earn')``) with
    # their values, those given per call with this call's (only their lengths count)
    carried = compiled.construct_params(_check=False)
    expanded = compiled.construct_expanded_state({**carried, **{name: params[name] for name in lists}})
    origin = {
        position: (name, index)
        for name, positions in expanded.parameter_expansion.items()
        for index, position in enumerate(positions)
    }
    binds: list[tuple[str | None, int | None, Any, _Processor]] = []
    flat_at: int | None = None
    for position in expanded.positiontup or ():
        name, index = origin.get(position, (position, None))
        if name == VALUES_ROWS:  # a VALUES list's rows: one parameter here, written out by render_values
            flat_at = len(binds)
            continue
        bind = compiled.binds[name]
        process = bind.type._cached_bind_processor(dialect)
        if bind.required:
            binds.append((name, index, None, process))
        else:  # a value the statement holds itself (LIMIT 1, a literal compared with, a list's item)
            binds.append((None, None, expanded.parameters[position], process))
    columns = compiled._result_columns
    row = _row_type(tuple(c[0] for c in columns)) if columns else None
    processors = tuple(
        (index, process)
        for index, c in enumerate(columns)
        if (process := c[3]._cached_result_processor(dialect, None)) is not None
    )
    if flat_at is None:
        return Plan(expanded.statement, tuple(binds), row, processors)
    sql, count = render_values(expanded.statement)
    return Plan(sql, tuple(binds), row, processors, (flat_at, count))


@dataclass(frozen=True, slots=True)
class _Connection:
    """The session's connection in this transaction, as :func:`rows` uses it."""

    sync: Any  # sqlalchemy.engine.Connection
    dialect: Dialect
    dbapi: Any  # SQLAlchemy's adapted DBAPI connection
    driver: Any  # asyncpg.Connection, an InlineConnection, a sqlite_thread.Connection, or None (the session)


async def _connection(session: AsyncSession) -> _Connection:
    """Kept per transaction and per savepoint: a savepoint begun is only emitted when a statement in it asks
    the session for its connection (so the first statement after ``begin_nested`` asks again)."""
    sync_session = session.sync_session
    if not sync_session.in_transaction():
        owned: _Connection | None = session.info.get(HELD)
        if owned is not None:  # the ORM has not begun: the unit of work's transaction is the driver's
            return owned
    current = sync_session.get_nested_transaction() or sync_session.get_transaction()
    held = session.info.get(_CONNECTION_KEY)
    if held is not None and current is not None and held[0] is current:
        return held[1]  # type: ignore[no-any-return]
    conn = await session.connection()
    fairy = await conn.get_raw_connection()
    driver = fairy.driver_connection
    dialect = conn.dialect
    if not (
        (dialect.name == "postgresql" and dialect.driver == "asyncpg")
        or (dialect.name == "sqlite" and isinstance(driver, InlineConnection | sqlite_thread.Connection))
    ):
        driver = None
    found = _Connection(conn.sync_connection, dialect, fairy.dbapi_connection, driver)
    current = sync_session.get_nested_transaction() or sync_session.get_transaction()
    session.info[_CONNECTION_KEY] = (current, found)
    return found


async def rows(session: AsyncSession, statement: Any, params: Mapping[str, Any]) -> list[Any]:
    """All rows of ``statement`` run with ``params`` in the session's transaction (see the module docstring)."""
    conn = await _connection(session)
    compiled = None if conn.driver is None else plan(statement, conn.dialect, params)
    if compiled is None:
        return await _through_session(session, statement, params)
    pending = session.sync_session
    if pending.autoflush and (pending._new or pending._deleted or pending.identity_map._modified):
        await session.flush()  # as session.execute would: what the ORM holds goes first
    args = compiled.parameters(params)
    sync = conn.sync
    if sync._has_events or sync.engine._has_events:
        listeners = sync.dispatch.before_cursor_execute
        if listeners:  # none outside tests and measurements: not even an empty iteration then
            for listener in listeners:
                listener(sync, None, compiled.sql, args, None, False)
    driver = conn.driver
    description = None
    try:
        if type(driver) is InlineConnection:
            raw, description = await driver.fetchall(compiled.sql, args, compiled.row is None)
        elif conn.dialect.name == "postgresql":
            raw = await _asyncpg(conn, compiled.sql, args)
        else:
            raw, cursor = await _on_thread(conn, compiled.sql, args)
            description = cursor.description
    except BaseException as error:  # a cancellation too: the session invalidates the connection it came on
        raise_as_the_session_would(conn, compiled.sql, args, error)
    return _built(conn, compiled, raw, description)


def _built(conn: _Connection, compiled: Plan, raw: list[Any], description: Any) -> list[Any]:
    """The driver's rows as :func:`rows` returns them (``description``: SQLite's, for SQL text)."""
    if not raw:
        return []
    row = compiled.row
    if row is None:  # SQL text: the columns as the driver names them
        names = raw[0].keys() if conn.dialect.name == "postgresql" else [d[0] for d in description]
        row = _row_type(tuple(names))
    if not compiled.processors:  # one C call a row (a till's rows are one or a few)
        make = row._make  # type: ignore[attr-defined]
        return [make(r) for r in raw]
    return [compiled.build(r, row) for r in raw]


#: A step of :func:`batch`: a statement built once and its parameters — a mapping, or a list of mappings to
#: run it once for each (an executemany, which returns no rows).
Step = tuple[Any, Mapping[str, Any] | list[Mapping[str, Any]]]


async def batch(session: AsyncSession, steps: Sequence[Step]) -> list[list[Any]]:
    """Run ``steps`` in order in the session's transaction; each one's rows (none for an executemany), as
    :func:`rows` returns them.

    Why: on the ordinary SQLite engine every statement is a hand-off to aiosqlite's thread and back (a queue
    put, a thread woken, a callback onto the event loop, the GIL changing hands twice), and on a loaded
    machine each of those waits for a core. Statements with no Python between them (an ingest page's lots,
    balances and events after its ledger entries; its cursor and events) run there in ONE call. Everything
    :func:`rows` guarantees holds: autoflush first, ``before_cursor_execute`` for each statement (before the
    call), a driver error raised as the session would raise it for the statement that failed (those before it
    ran, as they would have one by one: the caller's transaction decides). On the inline writer they run in one
    call of its driver too (:func:`_inline_steps`). Elsewhere (PostgreSQL, a statement with too many shapes)
    the steps run one after another, as :func:`rows` (an executemany through ``session.execute``)."""
    conn = await _connection(session)
    plans: list[Plan | None] = []  # None: an executemany of no rows, which runs nothing
    if isinstance(conn.driver, sqlite_thread.Connection | InlineConnection):
        for statement, params in steps:
            if isinstance(params, list) and not params:
                plans.append(None)
                continue
            first = params[0] if isinstance(params, list) else params
            found = plan(statement, conn.dialect, first)
            if found is None or (isinstance(params, list) and _PLANS[statement].lists):
                break
            plans.append(found)
    if len(plans) != len(steps) or all(p is None for p in plans):
        out: list[list[Any]] = []
        for statement, params in steps:
            if isinstance(params, list):
                if params:
                    await session.execute(statement, [dict(p) for p in params])
                out.append([])
            else:
                out.append(await rows(session, statement, params))
        return out
    pending = session.sync_session
    if pending.autoflush and (pending._new or pending._deleted or pending.identity_map._modified):
        await session.flush()  # as session.execute would: what the ORM holds goes first
    work: list[tuple[str, Any, bool]] = []
    for (_statement, params), compiled in zip(steps, plans, strict=True):
        if compiled is None:
            continue
        if isinstance(params, list):
            work.append((compiled.sql, [compiled.parameters(p) for p in params], True))
        else:
            work.append((compiled.sql, compiled.parameters(params), False))
    sync = conn.sync
    if sync._has_events or sync.engine._has_events:
        for sql, args, many in work:
            for listener in sync.dispatch.before_cursor_execute:
                listener(sync, None, sql, args, None, many)
    if type(conn.driver) is InlineConnection:
        results = iter(await _inline_steps(conn, work))
        out = []
        for compiled in plans:
            out.append([] if compiled is None else _built(conn, compiled, *next(results)))
        return out
    connection: sqlite3.Connection = conn.driver._conn

    def run() -> list[tuple[list[Any], Any]]:
        done: list[tuple[list[Any], Any]] = []
        for index, (sql, args, many) in enumerate(work):
            cursor = connection.cursor()
            try:
                if many:
                    cursor.executemany(sql, args)
                    done.append(([], None))
                else:
                    done.append((cursor.execute(sql, args).fetchall(), cursor.description))
            except Exception as error:
                raise _StepFailed(index, error) from error
            finally:
                cursor.close()
        return done

    try:
        async with conn.dbapi._execute_mutex:  # as SQLAlchemy's cursor: one statement at a time
            results = iter(await conn.driver._execute(run))
    except _StepFailed as failed:
        sql, args, _many = work[failed.index]
        raise_as_the_session_would(conn, sql, args, failed.error)
    except BaseException as error:  # a cancellation: the session invalidates the connection it came on
        raise_as_the_session_would(conn, work[0][0], work[0][1], error)
    out = []
    for compiled in plans:
        if compiled is None:
            out.append([])
        else:
            raw, description = next(results)
            out.append(_built(conn, compiled, raw, description))
    return out


async def _inline_steps(conn: _Connection, work: list[tuple[str, Any, bool]]) -> list[tuple[list[Any], Any]]:
    """A :func:`batch`'s statements on the inline writer's ``sqlite3`` connection, one after another in one
    call of :meth:`InlineConnection.run <tongcrm.db.inline_sqlite.InlineConnection.run>`: its busy retry and
    one turn for other tasks at most, for the whole batch.

    Why (issue #22, branch tillcpu16): a till's posting is three statements with no Python between them (the
    lots, balances and events made from its entries); run as :func:`rows` each paid its own connection
    look-up, autoflush and listener checks, a coroutine and a turn check around a few µs of SQLite. A
    statement refused busy (only taking the write lock can be, and it then had no effect) is retried from
    that statement on: the ones before it ran and are not run twice."""
    driver: InlineConnection = conn.driver
    done: list[tuple[list[Any], Any]] = []

    def run() -> list[tuple[list[Any], Any]]:
        cursor = driver._conn.cursor()
        try:
            for index in range(len(done), len(work)):
                sql, args, many = work[index]
                try:
                    if many:
                        cursor.executemany(sql, args)
                        done.append(([], None))
                    else:
                        done.append((cursor.execute(sql, args).fetchall(), cursor.description))
                except sqlite3.OperationalError as error:
                    if inline_sqlite.busy(error):
                        raise  # retried by the driver's run, from this statement on
                    raise _StepFailed(index, error) from error
                except Exception as error:
                    raise _StepFailed(index, error) from error
        finally:
            cursor.close()
        return done

    try:
        return await driver.run(run)
    except _StepFailed as failed:
        sql, args, _many = work[failed.index]
        raise_as_the_session_would(conn, sql, args, failed.error)
    except BaseException as error:  # busy past the timeout, a cancellation: as rows() raises them
        sql, args, _many = work[len(done)] if len(done) < len(work) else work[-1]
        raise_as_the_session_would(conn, sql, args, error)


class _StepFailed(Exception):
    """The step of a :func:`batch` whose statement the driver refused (the driver's error as its cause)."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index)
        self.index = index
        self.error = error


@functools.cache
def _row_type(names: tuple[str, ...]) -> type[tuple[Any, ...]]:
    return namedtuple("DirectRow", names, rename=True)


async def _through_session(session: AsyncSession, statement: Any, params: Mapping[str, Any]) -> list[Any]:
    if VALUES_ROWS in params:
        return await _values_through_session(session, statement, params)
    result = await session.execute(statement, dict(params))
    return list(result.all()) if getattr(result, "returns_rows", True) else []


async def _values_through_session(
    session: AsyncSession, statement: Any, params: Mapping[str, Any]
) -> list[Any]:
    """A ``VALUES`` list's statement (:func:`tongcrm.db.dialect.values_rows`) on the session's connection: its
    plan's SQL (the rows written out, :func:`tongcrm.db.dialect.render_values`) through ``exec_driver_sql``,
    which SQLAlchemy runs as any statement (its events, its errors), the rows built as :func:`rows` builds
    them."""
    pending = session.sync_session
    if pending.autoflush and (pending._new or pending._deleted or pending.identity_map._modified):
        await session.flush()  # as session.execute would: what the ORM holds goes first
    conn = await session.connection()
    compiled = plan(statement, conn.dialect, params)
    if compiled is None:  # pragma: no cover - a VALUES statement has one shape per dialect
        raise ValueError("a VALUES statement with list parameters")
    result = await conn.exec_driver_sql(compiled.sql, tuple(compiled.parameters(params)))
    if not result.returns_rows:
        return []
    row = compiled.row if compiled.row is not None else _row_type(tuple(result.keys()))
    return [compiled.build(tuple(raw), row) for raw in result.all()]


async def first(session: AsyncSession, statement: Any, params: Mapping[str, Any]) -> Any | None:
    """The first row of ``statement`` with ``params``, or None."""
    found = await rows(session, statement, params)
    return found[0] if found else None


async def _asyncpg(conn: _Connection, sql: str, args: list[Any]) -> list[Any]:
    adapter = conn.dbapi
    async with adapter._execute_mutex:  # as SQLAlchemy's cursor: one statement at a time per connection
        if adapter._transaction is None:
            await adapter._start_transaction()  # a no-op in autocommit
        return list(await conn.driver.fetch(sql, *args))


async def _on_thread(conn: _Connection, sql: str, args: list[Any]) -> tuple[list[Any], sqlite3.Cursor]:
    """SQLite: ``sql`` on the ``sqlite3`` connection of aiosqlite's thread, in one call there (see the module
    docstring); its rows and its cursor (closed, for the description)."""
    connection: sqlite3.Connection = conn.driver._conn

    def run() -> tuple[list[Any], sqlite3.Cursor]:
        cursor = connection.cursor()
        try:
            return cursor.execute(sql, args).fetchall(), cursor
        finally:
            cursor.close()

    async with conn.dbapi._execute_mutex:  # as SQLAlchemy's cursor: one statement at a time per connection
        done: tuple[list[Any], sqlite3.Cursor] = await conn.driver._execute(run)
    return done


def raise_as_the_session_would(
    conn: _Connection, sql: str, args: list[Any], error: BaseException
) -> NoReturn:
    """Raise ``error`` as ``session.execute`` raises a driver's error: through SQLAlchemy's own handling of it on
    the session's connection, so it is the DBAPIError subclass for it (the original attached), ``handle_error``
    listeners see it, and a lost connection (a PostgreSQL backend gone, a closed SQLite file) is invalidated —
    with the pool's connections made before it — instead of going back to the pool looking alive: there its
    next unit of work would fail on it again, and a commit of this one would have nothing to commit and say
    nothing (asyncpg's adapter forgets the transaction of a closed connection), its statements lost.

    A cancellation (``asyncio.CancelledError`` while the driver was awaited, a task cancelled or timed out) is
    handled as SQLAlchemy handles it under ``session.execute``: raised as it is, after the connection is
    invalidated (this one only, not the pool) — the statement may have run, or be running, on it, so neither
    the connection nor the unit of work can go on (a commit is refused until the session rolls back)."""
    if conn.dialect.name == "postgresql" and isinstance(error, Exception):
        try:
            conn.dbapi._handle_exception(error)  # asyncpg's error as the adapter's DBAPI error
        except Exception as adapted:
            error = adapted
    conn.sync._handle_dbapi_exception(error, sql, args, None, None)
    raise AssertionError("unreachable: SQLAlchemy's handling raises")  # pragma: no cover


def alone_possible(session: AsyncSession) -> bool:
    """Whether :func:`rows_alone` may run on ``session``: a unit of work holding its asyncpg connection
    (:mod:`tongcrm.db.held`) in which nothing has begun a transaction yet."""
    owned: _Connection | None = session.info.get(HELD)
    return (
        owned is not None
        and owned.dialect.name == "postgresql"
        and owned.driver is not None
        and owned.dbapi._transaction is None
        and not session.sync_session.in_transaction()
    )


async def rows_alone(session: AsyncSession, statement: Any, params: Mapping[str, Any]) -> list[Any]:
    """All rows of ``statement`` run on the held connection OUTSIDE any transaction (PostgreSQL runs one
    statement atomically in its own implicit transaction), where :func:`rows` would begin the unit of work's.
    The unit of work's transaction, if a later statement needs one, begins then; its commit or rollback does
    not touch what ran here (committed already). Only where :func:`alone_possible` says so.

    Why (issue #22, Build 2): a till's known-member checkout is a read and one statement of data-modifying
    CTEs (:mod:`tongcrm.counter_quick`); ``BEGIN`` and ``COMMIT`` around them were two of its round trips."""
    if not alone_possible(session):
        raise ValueError("rows_alone needs a held asyncpg unit of work that has begun nothing")
    conn: _Connection = session.info[HELD]
    compiled = plan(statement, conn.dialect, params)
    if compiled is None:  # pragma: no cover - the statements run alone have one shape
        raise ValueError("a statement with too many shapes to run alone")
    args = compiled.parameters(params)
    sync = conn.sync
    if sync._has_events or sync.engine._has_events:
        for listener in sync.dispatch.before_cursor_execute:
            listener(sync, None, compiled.sql, args, None, False)
    try:
        async with conn.dbapi._execute_mutex:
            raw = list(await conn.driver.fetch(compiled.sql, *args))
    except BaseException as error:  # a cancellation too: the session invalidates the connection it came on
        raise_as_the_session_would(conn, compiled.sql, args, error)
    return _built(conn, compiled, raw, None)
