"""Engines and sessions for the two supported databases.

Operators write plain URLs (``sqlite:///path``, ``postgresql://…``); the async driver is chosen here.
"""

from __future__ import annotations

import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from tongcrm.campaigns import control
from tongcrm.db.inline_sqlite import InlineConnection
from tongcrm.db.jsontext import json_text
from tongcrm.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Every engine hides bound parameters from its error messages and logs: a failed statement's values are
#: members' names, encrypted numbers and platform payloads, and its message ends up in the server log.
HIDE_PARAMETERS = True


#: ``?pooler=transaction`` on a PostgreSQL URL says a transaction-mode pooler (PgBouncer) stands between tongcrm
#: and the server: consecutive transactions of one client connection may run on different server connections.
POOLER_PARAM = "pooler"
POOLER_MODES = frozenset({"transaction", "session"})


def _parse(url: str) -> sa.URL:
    try:
        return make_url(url)
    except Exception as exc:
        raise ConfigError(f"cannot parse database URL {url!r}: {exc}") from exc


def transaction_pooled(url: str) -> bool:
    """True when ``url`` says ``?pooler=transaction`` (see :data:`POOLER_PARAM`)."""
    mode = _parse(url).query.get(POOLER_PARAM)
    if mode is not None and mode not in POOLER_MODES:
        raise ConfigError(f"{POOLER_PARAM}={mode!r} in TONGCRM_DATABASE_URL: use transaction or session")
    return mode == "transaction"


def async_url(url: str) -> sa.URL:
    """Map a plain database URL to its async-driver form, refusing databases tongcrm does not support.
    tongcrm's own ``pooler`` parameter is taken off (the driver would send it to the server)."""
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in {"postgresql", "postgres"}:
        transaction_pooled(url)  # refuses an unknown mode
        return parsed.difference_update_query([POOLER_PARAM]).set(drivername="postgresql+asyncpg")
    raise ConfigError(
        f"unsupported database {backend!r} in TONGCRM_DATABASE_URL: use sqlite:/// or postgresql://"
    )


def _sqlite_pragmas(busy_timeout_ms: int, cache_kib: int | None = None) -> Callable[[Any, Any], None]:
    """The connect listener of a SQLite engine. ``busy_timeout_ms``: how long SQLite itself waits for a lock
    (0 for inline connections, which wait in asyncio instead: :mod:`tongcrm.db.inline_sqlite`); ``cache_kib``:
    each connection's page cache, over what the connection was opened with (the ordinary engine's
    :data:`tongcrm.db.sqlite_thread.CACHE_KIB` on a database file, SQLite's 2,000 KiB otherwise)."""

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if cache_kib is not None:
            cursor.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        cursor.close()
        # campaigns freeze and split an audience in one INSERT … SELECT; PostgreSQL draws in plain SQL
        dbapi_connection.create_function(control.SQLITE_FUNCTION, 3, control.bucket, deterministic=True)
        # Take the write lock at BEGIN, so two writers queue on busy_timeout instead of one failing with
        # "database is locked" when it upgrades a read transaction to a write.
        dbapi_connection.isolation_level = None

    return on_connect


def _sqlite_on_begin(conn: Any) -> None:
    """``BEGIN`` (a reader) or ``BEGIN IMMEDIATE`` (a writer), sent on the driver connection's cursor.

    Why not ``conn.exec_driver_sql``: that runs SQLAlchemy's whole execution path (execution context, cursor
    wrapping, result) for a statement that answers nothing, once per unit of work; on a till's two short units
    of work per receipt it cost more than all their statements (issue #22, session 14: ~70 µs of CPU a unit of
    work on the inline writer). A failure goes through SQLAlchemy's handling on this connection as before, so
    a lock held past the busy timeout is still an ``OperationalError`` and a lost file invalidates the
    connection; only ``before_cursor_execute`` listeners no longer see the ``BEGIN``."""
    fairy = conn.connection
    driver = fairy.driver_connection
    if isinstance(driver, InlineConnection) and driver._conn.in_transaction:
        # a unit of work that holds its connection began the transaction on the driver already
        # (tongcrm.db.held): the session joins it
        return
    sql = "BEGIN" if conn.get_execution_options().get("readonly") else "BEGIN IMMEDIATE"
    cursor = fairy.dbapi_connection.cursor()
    try:
        cursor.execute(sql)
    except BaseException as error:  # as exec_driver_sql would raise it (a cancellation included)
        conn._handle_dbapi_exception(error, sql, (), cursor, None)
    finally:
        cursor.close()


def _sqlite_events(engine: AsyncEngine, *, busy_timeout_ms: int, cache_kib: int | None = None) -> AsyncEngine:
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas(busy_timeout_ms, cache_kib))
    event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
    return engine


def create_engine(
    url: str, *, echo: bool = False, pool_size: int = 10, sqlite_cache_kib: int | None = None
) -> AsyncEngine:
    """The engine of ``url``. ``sqlite_cache_kib``: on SQLite, each connection's page cache instead of the
    ordinary engine's (:data:`tongcrm.db.sqlite_thread.CACHE_KIB` on a database file)."""
    aurl = async_url(url)
    if aurl.get_backend_name() == "sqlite":
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        database = _plain_sqlite_file(aurl)
        if database is not None:
            # one hand-off to aiosqlite's thread per statement instead of four (tongcrm.db.sqlite_thread)
            from tongcrm.db.sqlite_thread import connector

            creator = connector(database, check_same_thread=False, **connect_args)
            engine = create_async_engine(
                aurl,
                echo=echo,
                hide_parameters=HIDE_PARAMETERS,
                json_serializer=json_text,
                async_creator=creator,
            )
        else:
            engine = create_async_engine(
                aurl,
                echo=echo,
                hide_parameters=HIDE_PARAMETERS,
                json_serializer=json_text,
                connect_args=connect_args,
            )
        return _sqlite_events(engine, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS, cache_kib=sqlite_cache_kib)
    engine = create_async_engine(
        aurl,
        echo=echo,
        hide_parameters=HIDE_PARAMETERS,
        json_serializer=json_text,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args=_transaction_pooler_args() if transaction_pooled(url) else {},
    )
    _ping_when_idle(engine)
    return engine


#: A pooled PostgreSQL connection idle longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 5.0
_LAST_USED = "tongcrm_last_used"


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection before use only when it sat idle for :data:`IDLE_PING_SECONDS`.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout, and asyncpg's ping is three round trips (``BEGIN``,
    ``;``, ``ROLLBACK``: wrapped in a transaction for transaction-mode poolers), so a till's checkout or lookup
    paid three round trips of its ~15 for it (issue #22). A connection handed back moments ago is as alive as
    a ping would show; one that sat idle — over a server restart, a pooler's idle timeout — is pinged, and one
    that fails the ping is replaced before anyone uses it (the pool retries on ``DisconnectionError``). A
    connection that dies within the window fails its next statement, and the pool then drops every connection
    made before it (SQLAlchemy's handling of a disconnect error), as it would with ``pool_pre_ping``."""

    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get(_LAST_USED)
        if last is not None and time.monotonic() - last < IDLE_PING_SECONDS:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"pooled connection failed its ping: {exc}") from exc

    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    event.listen(engine.sync_engine, "connect", on_checkin)  # a connection made just now is alive
    event.listen(engine.sync_engine, "checkout", on_checkout)
    event.listen(engine.sync_engine, "checkin", on_checkin)


def _transaction_pooler_args() -> dict[str, Any]:
    """asyncpg behind a transaction-mode pooler (checked against PgBouncer 1.18 in
    ``core/tests/test_pgbouncer.py``): a statement prepared in one transaction is gone in the next (another
    server connection), and two clients' ``__asyncpg_stmt_1__`` collide on one server connection. So no
    statement cache, and every prepared statement gets a name no other client uses (either one alone fails);
    asyncpg's own cache (the pool's ping, type introspection) is off too, so it uses unnamed statements."""
    return {
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _unique_statement_name,
        "statement_cache_size": 0,
    }


def _unique_statement_name() -> str:
    return f"__tongcrm_{uuid.uuid4().hex}__"


def _plain_sqlite_file(aurl: sa.URL) -> str | None:
    """The path of a plain SQLite database file; None for other databases, in-memory ones, and URI filenames
    or driver options (those stay with aiosqlite's own connect)."""
    database = aurl.database
    if aurl.get_backend_name() != "sqlite" or not database or database == ":memory:" or aurl.query:
        return None
    return database


def create_inline_writer(url: str, *, cache_kib: int | None = None) -> AsyncEngine | None:
    """An engine for short writing units of work that runs SQLite on the event loop's thread
    (:mod:`tongcrm.db.inline_sqlite`); None for other databases, where the ordinary engine serves.
    ``cache_kib``: each connection's page cache (SQLite's 2,000 KiB by default; a sync's pages ask for the
    ordinary engine's :data:`tongcrm.db.sqlite_thread.CACHE_KIB`, see :func:`tongcrm.ingest.service.sync_account`)."""
    aurl = async_url(url)
    database = _plain_sqlite_file(aurl)
    if database is None:
        return None
    from tongcrm.db.inline_sqlite import connector

    engine = create_async_engine(
        aurl,
        async_creator=connector(database),
        pool_size=2,
        max_overflow=4,
        hide_parameters=HIDE_PARAMETERS,
        json_serializer=json_text,
    )
    _INLINE_WRITERS.add(engine.sync_engine)
    return _sqlite_events(engine, busy_timeout_ms=0, cache_kib=cache_kib)


#: engines made by :func:`create_inline_writer` (their connections run ``sqlite3`` on the event loop's thread)
_INLINE_WRITERS: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def is_inline_writer(engine: AsyncEngine) -> bool:
    """True for an engine made by :func:`create_inline_writer`."""
    return engine.sync_engine in _INLINE_WRITERS


def session_factory(engine: AsyncEngine, *, readonly: bool = False) -> async_sessionmaker[AsyncSession]:
    """``readonly`` sessions skip SQLite's write lock (a plain deferred BEGIN), so lookups never queue
    behind writers; they must not write."""
    bind = engine.execution_options(readonly=True) if readonly else engine
    return async_sessionmaker(bind, expire_on_commit=False)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on any error."""
    async with sessions() as session, session.begin():
        yield session
