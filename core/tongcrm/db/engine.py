"""Engines and sessions for the two supported databases.

Operators write plain URLs (``sqlite:///path``, ``postgresql://…``); the async driver is chosen here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from tongcrm.campaigns import control
from tongcrm.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Every engine hides bound parameters from its error messages and logs: a failed statement's values are
#: members' names, encrypted numbers and platform payloads, and its message ends up in the server log.
HIDE_PARAMETERS = True


def async_url(url: str) -> sa.URL:
    """Map a plain database URL to its async-driver form, refusing databases tongcrm does not support."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"cannot parse database URL {url!r}: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in {"postgresql", "postgres"}:
        return parsed.set(drivername="postgresql+asyncpg")
    raise ConfigError(
        f"unsupported database {backend!r} in TONGCRM_DATABASE_URL: use sqlite:/// or postgresql://"
    )


def _sqlite_pragmas(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    """The connect listener of a SQLite engine. ``busy_timeout_ms``: how long SQLite itself waits for a lock
    (0 for inline connections, which wait in asyncio instead: :mod:`tongcrm.db.inline_sqlite`)."""

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        # campaigns freeze and split an audience in one INSERT … SELECT; PostgreSQL draws in plain SQL
        dbapi_connection.create_function(control.SQLITE_FUNCTION, 3, control.bucket, deterministic=True)
        # Take the write lock at BEGIN, so two writers queue on busy_timeout instead of one failing with
        # "database is locked" when it upgrades a read transaction to a write.
        dbapi_connection.isolation_level = None

    return on_connect


def _sqlite_on_begin(conn: Any) -> None:
    if conn.get_execution_options().get("readonly"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_events(engine: AsyncEngine, *, busy_timeout_ms: int) -> AsyncEngine:
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas(busy_timeout_ms))
    event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
    return engine


def create_engine(url: str, *, echo: bool = False, pool_size: int = 10) -> AsyncEngine:
    aurl = async_url(url)
    if aurl.get_backend_name() == "sqlite":
        engine = create_async_engine(
            aurl,
            echo=echo,
            hide_parameters=HIDE_PARAMETERS,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        return _sqlite_events(engine, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS)
    return create_async_engine(
        aurl,
        echo=echo,
        hide_parameters=HIDE_PARAMETERS,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
    )


def create_inline_writer(url: str) -> AsyncEngine | None:
    """An engine for short writing units of work that runs SQLite on the event loop's thread
    (:mod:`tongcrm.db.inline_sqlite`); None for other databases, where the ordinary engine serves."""
    aurl = async_url(url)
    database = aurl.database
    if aurl.get_backend_name() != "sqlite" or not database or database == ":memory:" or aurl.query:
        return None  # not a plain SQLite file (URI filenames and driver options stay with aiosqlite)
    from tongcrm.db.inline_sqlite import connector

    engine = create_async_engine(
        aurl,
        async_creator=connector(database),
        pool_size=2,
        max_overflow=4,
        hide_parameters=HIDE_PARAMETERS,
    )
    return _sqlite_events(engine, busy_timeout_ms=0)


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
