"""Throw-away databases for tests: a SQLite file, or a PostgreSQL database created and dropped per run.

PostgreSQL runs when ``TONGCRM_TEST_POSTGRES_URL`` names a server (any database on it; the tests create
their own ``tongcrm_test_…`` database next to it and drop it afterwards).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from tongcrm.db import stats
from tongcrm.db.engine import async_url, create_engine, session_factory

POSTGRES_ENV = "TONGCRM_TEST_POSTGRES_URL"


def backends() -> list[str]:
    return ["sqlite", "postgresql"] if os.environ.get(POSTGRES_ENV) else ["sqlite"]


@dataclass
class TestDatabase:
    """A migrated database for one backend, with session factories bound to it."""

    __test__ = False  # not a test class

    backend: str
    url: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    read_sessions: async_sessionmaker[AsyncSession]

    async def truncate(self) -> None:
        """Empty every table (schema stays), between tests; the database's analyse schedule starts again
        (:func:`tongcrm.db.stats.restart`), as for a new database."""
        stats.restart(self.engine.url)
        if self.backend != "postgresql":
            await self._truncate_sqlite()
            return
        async with self.engine.begin() as conn:
            names = [row[0] for row in await conn.execute(_TOUCHED_TABLES)]
            if names:
                quoted = ", ".join(f'"{n}"' for n in names)
                await conn.execute(sa.text(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE"))

    async def _truncate_sqlite(self) -> None:
        """SQLite: every table emptied in one transaction with foreign keys off, then on again.

        Why off: with foreign keys enforced SQLite deletes a parent table row by row and looks each row up in
        its child tables (deferred or not), a scan of the child per row where the child's column has no index;
        emptying the database of a 100,000-order benchmark took minutes. Off, ``DELETE FROM`` without ``WHERE``
        drops the table's pages at once (SQLite's truncate optimisation), and every table is emptied, so no
        reference is left dangling. ``PRAGMA foreign_keys`` is a no-op inside a transaction, so it is set on the
        driver's connection before ``BEGIN`` and restored after it, as the engine's connect listener set it."""
        async with self.engine.connect() as conn:
            names = await conn.run_sync(_table_names)
            found = await conn.execute(sa.text("SELECT 1 FROM sqlite_master WHERE name='sqlite_sequence'"))
            if found.first() is not None:
                names.append("sqlite_sequence")
            await conn.rollback()
            if not names:
                return
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            deletes = " ".join(f'DELETE FROM "{name}";' for name in names)  # noqa: S608 - names from the schema
            try:
                await driver.executescript(f"PRAGMA foreign_keys=OFF; BEGIN IMMEDIATE; {deletes} COMMIT;")
            except BaseException:
                if driver.in_transaction:
                    await driver.rollback()
                raise
            finally:
                await driver.execute("PRAGMA foreign_keys=ON")


# PostgreSQL: the tables a test may have changed since the last truncate. A truncated (or new) table has an empty
# heap file, has never been analysed (reltuples -1) and its serial/identity sequences were never called; a table
# that still looks so is already in the state TRUNCATE ... RESTART IDENTITY would leave it in, so only the others
# are truncated (CASCADE adds the tables that reference them). Why: TRUNCATE gives every table, its indexes and
# its TOAST table new files; all 81 tables cost seconds of wall per test on a loaded server (0.3-3 s, PostgreSQL's
# file creation and WAL flush), the larger part of the PostgreSQL half of the suite, where a test touches a few.
# Any insert extends the heap (a rolled-back one too; an update or delete needs a row inserted before), so the
# heap's size catches every write; a CHECK failure before the heap insert still calls the sequence, caught below
# (the CASE keeps pg_sequence_last_value off the TOAST tables that also depend on a table, whatever the plan).
_TOUCHED_TABLES = sa.text(
    """
    SELECT c.relname FROM pg_class c
    WHERE c.relnamespace = to_regnamespace(current_schema()) AND c.relkind IN ('r', 'p')
      AND c.relname <> 'alembic_version'
      AND (pg_relation_size(c.oid) > 0 OR c.reltuples >= 0 OR EXISTS (
        SELECT 1 FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid = c.oid AND d.deptype IN ('a', 'i')
          AND CASE WHEN s.relkind = 'S' THEN pg_sequence_last_value(s.oid) IS NOT NULL ELSE false END))
    """
)


def _table_names(conn: sa.Connection) -> list[str]:
    return [t for t in sa.inspect(conn).get_table_names() if t != "alembic_version"]


@asynccontextmanager
async def scratch_url(backend: str, *, durable: bool = True) -> AsyncIterator[str]:
    """A URL to an empty database of ``backend`` that is removed afterwards.

    ``durable=False`` (PostgreSQL): the database's sessions commit without waiting for the WAL flush
    (``synchronous_commit = off`` on the database). A commit is as visible and as atomic as before; only a crash
    of the server itself could lose the last commits, which no test does. The tests' databases use it, so that a
    test's commits do not wait for the disk of a shared machine; the benchmarks keep durable commits (their
    figures are the product's)."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="tongcrm-test-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'test.sqlite3'}"
        return
    server = os.environ.get(POSTGRES_ENV)
    if not server:
        raise RuntimeError(f"{POSTGRES_ENV} is not set")
    name = f"tongcrm_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_async_engine(async_url(server), isolation_level="AUTOCOMMIT", hide_parameters=True)
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            if not durable:
                await conn.execute(sa.text(f'ALTER DATABASE "{name}" SET synchronous_commit TO off'))
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@asynccontextmanager
async def open_database(backend: str, url: str) -> AsyncIterator[TestDatabase]:
    engine = create_engine(url)
    try:
        yield TestDatabase(
            backend, url, engine, session_factory(engine), session_factory(engine, readonly=True)
        )
    finally:
        await engine.dispose()
