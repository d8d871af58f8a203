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
        async with self.engine.begin() as conn:
            names = await conn.run_sync(
                lambda c: [t for t in sa.inspect(c).get_table_names() if t != "alembic_version"]
            )
            if not names:
                return
            if self.backend == "postgresql":
                quoted = ", ".join(f'"{n}"' for n in names)
                await conn.execute(sa.text(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE"))
            else:
                await conn.execute(sa.text("PRAGMA defer_foreign_keys=ON"))
                for name in names:
                    await conn.execute(sa.text(f'DELETE FROM "{name}"'))  # noqa: S608 - names from the schema
                has_seq = (
                    await conn.execute(sa.text("SELECT 1 FROM sqlite_master WHERE name='sqlite_sequence'"))
                ).first()
                if has_seq:
                    await conn.execute(sa.text("DELETE FROM sqlite_sequence"))


@asynccontextmanager
async def scratch_url(backend: str) -> AsyncIterator[str]:
    """A URL to an empty database of ``backend`` that is removed afterwards."""
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
