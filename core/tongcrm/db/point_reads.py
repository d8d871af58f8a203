"""Point reads: one Core statement, compiled once, run straight on the driver.

The hottest reads (member lookups at the service desk, the till and platform callbacks) fetch one row by an
index. Through an ORM session each of them cost about half a millisecond of Python (session, transaction,
execution context, greenlet hand-offs, and on SQLite nine hops to aiosqlite's thread) for some twenty
microseconds of database work. A :class:`PointReader` skips all of that: a :class:`PointQuery` is compiled
once per dialect and parameter shape, its parameters are bound positionally, and its columns go through the
same SQLAlchemy type processors an ORM read would apply, so the values are identical.

- SQLite file: one :mod:`sqlite3` connection used inline on the event loop's thread, ``query_only`` and with
  a short busy timeout. A point read in WAL mode takes microseconds and never waits for writers; one that
  cannot read at once (only during WAL recovery) fails fast rather than stalling the loop.
  Reads of a :class:`KeyedQuery` with a ``listed`` statement that start in the same turn share one statement.
- PostgreSQL: a few asyncpg connections in autocommit (:mod:`tongcrm.db.pg_connections`), so a read is one
  round trip (asyncpg prepares and caches the statement per connection, and the sessions use generic plans:
  see :class:`AsyncpgReader`). Reads of a :class:`KeyedQuery` that start in the same turn of the event loop
  share one statement.
- anything else (an in-memory SQLite database): a connection of the ordinary engine.

Each read is its own snapshot: never use a reader for reads that must see several tables at one moment, and
never for anything long (on SQLite it holds the event loop while it runs).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import types
import weakref
from abc import ABC, abstractmethod
from collections import namedtuple
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine

from tongcrm.db.direct import Plan, compile_plan, plan_shape
from tongcrm.db.engine import async_url, transaction_pooled
from tongcrm.db.pg_connections import ConnectionKeeper, prepare_ahead

#: A SQLite point read that cannot start within this time fails instead of holding the event loop.
INLINE_BUSY_TIMEOUT_S = 0.5
#: How much of the database file the SQLite reader maps into memory.
SQLITE_MMAP_BYTES = 1 << 30


#: every point query made (they are built once, at import): whose plans :func:`planned_sql` lists
_QUERIES: weakref.WeakSet[PointQuery] = weakref.WeakSet()


class PointQuery:
    """A SELECT to run through a :class:`PointReader`; rows come back as named tuples of its columns.

    ``lists`` names the parameters that are lists (``column.in_(sa.bindparam(name, expanding=True))``); the
    statement is compiled once per dialect and per length of each of them.
    """

    def __init__(self, statement: sa.Select[Any], *, lists: Sequence[str] = ()) -> None:
        self.statement = statement
        self._lists = tuple(lists)
        self._names = [str(c.key) for c in statement.selected_columns]
        #: the rows' type: a named tuple of the statement's column keys
        self.row: type[tuple[Any, ...]] = namedtuple("PointRow", self._names, rename=True)  # type: ignore[misc]
        self._plans: dict[tuple[str, tuple[int, ...]], Plan] = {}
        _QUERIES.add(self)

    def plan(self, dialect: Dialect, params: Mapping[str, Any]) -> Plan:
        shape = plan_shape(dialect, self._lists, params)
        plan = self._plans.get(shape)
        if plan is None:
            plan = self._plans[shape] = self._compile(dialect, params)
        return plan

    def _compile(self, dialect: Dialect, params: Mapping[str, Any]) -> Plan:
        return compile_plan(self.statement, dialect, self._lists, params)


def planned_sql(dialect_name: str) -> list[str]:
    """The SQL of every point read's plan kept for ``dialect_name``: what a serving process compiled at start-up
    (its rehearsal, :mod:`tongcrm.warmup`) and since, for preparing on the reader's connections opened ahead."""
    return [
        found.sql
        for query in list(_QUERIES)
        for (name, _lengths), found in list(query._plans.items())
        if name == dialect_name
    ]


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class KeyedQuery:
    """A point read by any of a caller's few keys, which callers that arrive together may share.

    ``one`` reads for one caller: its list parameter named ``keys`` holds the caller's keys, and it returns at
    most one row. ``many`` reads for several callers at once: the same parameter holds all their keys as one
    array (so that one prepared statement serves any number of callers), it returns at most one row per key, and
    its first column is the key the row was found by, followed by the columns of ``one``. The other parameters
    (the *group*, e.g. an identity kind) are the same for every caller sharing a statement.

    Why: across a socket a point read costs mostly its round trip (the driver, the event loop's wake-ups, the
    server's work per statement), not its row. When lookups arrive together — tills and service desks on
    Double 11 — a few share one round trip instead of each paying for its own.
    """

    one: PointQuery
    many: PointQuery
    keys: str
    #: ``many`` with the keys as a list parameter (``column.in_(sa.bindparam(keys, expanding=True))``), for a
    #: driver without array parameters (SQLite): compiled once per number of keys. None: such a reader reads
    #: for each caller alone.
    listed: PointQuery | None = None

    def __post_init__(self) -> None:
        _KEYED.add(self)


#: every keyed query made: whose shared statements :meth:`AsyncpgReader.open_ahead` plans before it prepares
_KEYED: weakref.WeakSet[KeyedQuery] = weakref.WeakSet()


class PointReader(ABC):
    """Runs :class:`PointQuery` reads; one per app, closed at shutdown."""

    @abstractmethod
    async def first(self, query: PointQuery, params: Mapping[str, Any]) -> Any | None:
        """The first row of ``query`` with ``params``, or None."""

    async def first_by_keys(
        self, query: KeyedQuery, group: Mapping[str, Any], keys: Sequence[Any]
    ) -> Any | None:
        """The row of ``query.one`` for the group and ``keys``, or None. This reader reads for each caller alone;
        one across a socket may share the statement with other callers (same answer)."""
        return await self.first(query.one, {**group, query.keys: list(keys)})

    async def close(self) -> None:  # noqa: B027 - most readers hold nothing
        """Release connections."""

    async def open_ahead(self, count: int) -> int:
        """Open up to ``count`` connections now, each with the point reads planned so far prepared on it
        (:func:`tongcrm.warmup.open_ahead`); answers how many it opened. Readers without connections of their
        own open none."""
        return 0


class SQLiteReader(PointReader):
    """Point reads on a SQLite file, inline on the event loop's thread.

    Reads of a :class:`KeyedQuery` with a ``listed`` statement that start in the same turn of the event loop
    share one statement (at most :attr:`MAX_BATCH` callers): the turn's first caller yields once, so that the
    callers already runnable in that turn join, then runs it for them all. Why (issue #22, branch lookup12): a
    served lookup's statement cost about twice what it costs in a tight loop — its read transaction (two
    ``fcntl`` and an ``fstat``), the module's execute and the B-tree's upper pages fetched again after the
    Python between two statements — and a loaded server answers several lookups per turn. The statement runs
    after every caller that shares it asked, so each caller's read is as fresh as a read of its own made at that
    moment (a caller's own earlier writes included). A caller alone in its turn pays the yield (~7 us of CPU).
    """

    MAX_BATCH = 8

    def __init__(self, database: str, dialect: Dialect) -> None:
        self._database = database
        self._dialect = dialect
        self._conn: sqlite3.Connection | None = None
        #: batches still taking callers, by (query, group)
        self._open: dict[tuple[int, tuple[tuple[str, Any], ...]], _Batch] = {}
        #: statements run for :meth:`first_by_keys`, and the callers they answered
        self.shared_statements = 0
        self.shared_callers = 0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._database, timeout=INLINE_BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
            )
            conn.execute("PRAGMA query_only=ON")
            # reads through the OS page cache instead of copying pages into SQLite's own small cache
            conn.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
            self._conn = conn
        return self._conn

    async def first(self, query: PointQuery, params: Mapping[str, Any]) -> Any | None:
        return self._first(query, params)

    async def first_by_keys(
        self, query: KeyedQuery, group: Mapping[str, Any], keys: Sequence[Any]
    ) -> Any | None:
        """Joins the batch of callers that asked for ``query`` and ``group`` in this turn of the event loop
        (without a ``listed`` statement: reads inline, as :meth:`first` does)."""
        if query.listed is None:
            return self._first(query.one, {**group, query.keys: keys})
        slot = (id(query), tuple(group.items()) if len(group) < 2 else tuple(sorted(group.items())))
        batch = self._open.get(slot)
        if batch is not None and len(batch.waiters) < self.MAX_BATCH - 1:  # the leader and its followers
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            batch.waiters.append((keys, future))
            return await future
        # the turn's first caller leads the batch: it lets the callers already runnable join, then reads for all
        batch = self._open[slot] = _Batch(query, dict(group))
        try:
            await _next_turn()
        except BaseException:  # cancelled meanwhile: those who joined are still answered
            asyncio.get_running_loop().call_soon(self._answer, slot, batch, None)
            raise
        return self._answer(slot, batch, keys)

    def _answer(
        self, slot: tuple[int, tuple[tuple[str, Any], ...]], batch: _Batch, lead: Sequence[Any] | None
    ) -> Any | None:
        """Runs a batch's statement and answers the callers that joined it; returns the row of the caller
        that leads it (``lead``: its keys; None when it left) or raises the statement's failure to it."""
        if self._open.get(slot) is batch:
            del self._open[slot]
        waiters = [(keys, future) for keys, future in batch.waiters if not future.done()]
        callers = [keys for keys, _ in waiters] if lead is None else [lead, *(keys for keys, _ in waiters)]
        if not callers:
            return None
        self.shared_statements += 1
        self.shared_callers += len(callers)
        query = batch.query
        try:
            if len(callers) == 1:
                found = [self._first(query.one, {**batch.group, query.keys: callers[0]})]
            else:
                assert query.listed is not None
                wanted = list(dict.fromkeys(key for keys in callers for key in keys))
                params = {**batch.group, query.keys: wanted}
                plan = query.listed.plan(self._dialect, params)
                by_key: dict[Any, Any] = {}
                for raw in self._connection().execute(plan.sql, plan.parameters(params)).fetchall():
                    built = plan.build(raw, query.listed.row)
                    by_key.setdefault(built[0], query.one.row(*built[1:]))
                found = [_found(by_key, keys) for keys in callers]
        except BaseException as exc:  # every caller of the statement gets its failure
            for _, future in waiters:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            if lead is not None or not isinstance(exc, Exception):
                raise
            return None
        answers = iter(found)
        mine = next(answers) if lead is not None else None
        for (_, future), answer in zip(waiters, answers, strict=True):
            if not future.done():
                future.set_result(answer)
        return mine

    def _first(self, query: PointQuery, params: Mapping[str, Any]) -> Any | None:
        plan = query.plan(self._dialect, params)
        raw = self._connection().execute(plan.sql, plan.parameters(params)).fetchone()
        return None if raw is None else plan.build(raw, query.row)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@types.coroutine
def _next_turn() -> Generator[None, None, None]:
    """Lets the event loop run what is already runnable, as ``asyncio.sleep(0)`` does, without its call."""
    yield


@dataclass(eq=False, slots=True)
class _Batch:
    """Callers of one :class:`KeyedQuery` and group that will share a statement."""

    query: KeyedQuery
    group: dict[str, Any]
    waiters: list[tuple[Sequence[Any], asyncio.Future[Any]]] = field(default_factory=list)


def _found(by_key: Mapping[Any, Any], keys: Sequence[Any]) -> Any | None:
    """The row of the first of a caller's ``keys`` that a shared statement found (a caller's keys are in the
    order it prefers them, as ``one`` would pick among them)."""
    for key in keys:
        row = by_key.get(key)
        if row is not None:
            return row
    return None


class AsyncpgReader(PointReader):
    """Point reads on PostgreSQL.

    Its sessions run with ``plan_cache_mode = force_generic_plan``: every point read is a lookup by a
    unique index, which a generic plan does as well as a custom one, and PostgreSQL would otherwise plan a
    statement with an array parameter afresh on every execution (it judges a generic plan for an array of
    unknown length too costly), which took more of the server's time than the read itself.

    Shared statements (:meth:`first_by_keys`) take at most :attr:`MAX_BATCH` callers: with every waiting
    request in one statement the event loop would sit idle until it returns; smaller batches keep one in
    flight while the loop answers another's callers.
    """

    MAX_BATCH = 8

    def __init__(self, dsn: str, dialect: Dialect, *, max_size: int = 10) -> None:
        self._dialect = dialect
        self._connections = ConnectionKeeper(
            dsn,
            max_size=max_size,
            init=_json_codecs,
            server_settings={"plan_cache_mode": "force_generic_plan"},
        )
        #: batches still taking callers, by (query, group)
        self._open: dict[tuple[int, tuple[tuple[str, Any], ...]], _Batch] = {}
        self._running: set[asyncio.Task[None]] = set()
        #: statements run for :meth:`first_by_keys`, and the callers they answered
        self.shared_statements = 0
        self.shared_callers = 0

    async def first(self, query: PointQuery, params: Mapping[str, Any]) -> Any | None:
        plan = query.plan(self._dialect, params)
        async with self._connections.connection() as conn:
            raw = await conn.fetchrow(plan.sql, *plan.parameters(params))
        return None if raw is None else plan.build(tuple(raw), query.row)

    async def first_by_keys(
        self, query: KeyedQuery, group: Mapping[str, Any], keys: Sequence[Any]
    ) -> Any | None:
        """Joins the batch of callers that asked for ``query`` and ``group`` in this turn of the event loop.

        The batch's statement runs in a task started with the batch, so it goes out once the callers already
        runnable in this turn have joined; callers after that, or beyond :attr:`MAX_BATCH`, start another.
        """
        loop = asyncio.get_running_loop()
        slot = (id(query), tuple(sorted(group.items())))
        batch = self._open.get(slot)
        if batch is None or len(batch.waiters) >= self.MAX_BATCH:
            batch = self._open[slot] = _Batch(query, dict(group))
            task = loop.create_task(self._run(slot, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        future: asyncio.Future[Any] = loop.create_future()
        batch.waiters.append((keys, future))
        return await future

    async def _run(self, slot: tuple[int, tuple[tuple[str, Any], ...]], batch: _Batch) -> None:
        if self._open.get(slot) is batch:
            del self._open[slot]
        waiters = [(keys, future) for keys, future in batch.waiters if not future.done()]
        if not waiters:
            return
        self.shared_statements += 1
        self.shared_callers += len(waiters)
        query = batch.query
        try:
            if len(waiters) == 1:
                found = [await self.first(query.one, {**batch.group, query.keys: list(waiters[0][0])})]
            else:
                wanted = list(dict.fromkeys(key for keys, _ in waiters for key in keys))
                plan = query.many.plan(self._dialect, {**batch.group, query.keys: wanted})
                async with self._connections.connection() as conn:
                    raws = await conn.fetch(plan.sql, *plan.parameters({**batch.group, query.keys: wanted}))
                by_key = {
                    row[0]: query.one.row(*row[1:])
                    for row in (plan.build(tuple(r), query.many.row) for r in raws)
                }
                found = [next((by_key[k] for k in keys if k in by_key), None) for keys, _ in waiters]
        except BaseException as exc:  # every caller of the statement gets its failure
            for _, future in waiters:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), row in zip(waiters, found, strict=True):
            if not future.done():
                future.set_result(row)

    async def open_ahead(self, count: int) -> int:
        # A shared statement (``many``) is planned by the first callers that arrive together, not by the
        # start-up's rehearsal of one caller: planned here, it is prepared with the rest on every connection.
        # Otherwise, when the 8 tills' key checks lapsed together (every ``KeyVerifier`` TTL), each connection
        # the batch landed on parsed it and asked the server for its array parameter's type (asyncpg's type
        # introspection, a recursive catalog query: 17-130 ms of a backend's time at load 8-13) while the
        # tills waited for it (issue #22, branch tillpg17).
        for keyed in list(_KEYED):
            keyed.many.plan(self._dialect, {})
        statements = planned_sql(self._dialect.name)

        async def ready(conn: Any) -> None:
            await prepare_ahead(conn, statements)

        return await self._connections.open_ahead(count, ready)

    async def close(self) -> None:
        await self._connections.close()


async def _json_codecs(conn: Any) -> None:
    """JSON columns decoded as SQLAlchemy's asyncpg dialect decodes them (its JSON type then passes them on)."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class EngineReader(PointReader):
    """Through an ordinary engine (an in-memory SQLite database has no second connection to read with)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def first(self, query: PointQuery, params: Mapping[str, Any]) -> Any | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(query.statement, dict(params))).first()
        return None if row is None else query.row(*row)


def create_point_reader(url: str, engine: AsyncEngine) -> PointReader:
    """The reader for ``url``; ``engine`` is the app's ordinary engine on the same database."""
    aurl = async_url(url)
    if aurl.get_backend_name() == "postgresql" and transaction_pooled(url):
        # the direct reader lives on asyncpg's prepared statements, which a transaction pooler cannot keep:
        # read through the engine (set up for the pooler) instead. Faster: a session pool, or no pooler.
        return EngineReader(engine)
    if aurl.get_backend_name() == "postgresql":
        dsn = aurl.set(drivername="postgresql").render_as_string(hide_password=False)
        return AsyncpgReader(dsn, engine.dialect)
    database = aurl.database
    if aurl.get_backend_name() == "sqlite" and database and database != ":memory:":
        return SQLiteReader(database, engine.dialect)
    return EngineReader(engine)
