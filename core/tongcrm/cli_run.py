"""What the CLI's command groups share: the caller the root command passes down, the actor the CLI's changes
are audited as, and running one piece of async work against the configured database from a click command.

Each command opens its own engine and disposes of it before returning: a command is one short process, and an
engine left open would keep PostgreSQL connections (and SQLite's file) past the command's exit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit.service import Actor
from tongcrm.config import Settings
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.plugin.host import PluginHost

#: Whoever runs the CLI can read the database anyway: it acts as an admin, and its changes are audited as ``cli``.
CLI_ACTOR = Actor("cli", "admin")

Sessions = async_sessionmaker[AsyncSession]
T = TypeVar("T")


class CliObj(Protocol):
    """What the root command passes down (:class:`tongcrm.cli.Context`)."""

    host: PluginHost

    @property
    def settings(self) -> Settings: ...


def run_with_sessions(obj: CliObj, body: Callable[[Sessions], Awaitable[T]]) -> T:
    """``body`` with a session factory on the configured database (for work of several transactions)."""

    async def main() -> T:
        engine = create_engine(obj.settings.database_url)
        try:
            return await body(session_factory(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def read(obj: CliObj, query: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``query`` in one read-only session."""

    async def main() -> T:
        engine = create_engine(obj.settings.database_url)
        try:
            async with session_factory(engine, readonly=True)() as session:
                return await query(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def write(obj: CliObj, change: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``change`` in one transaction, committed when it returns."""

    async def body(sessions: Sessions) -> T:
        async with sessions() as session, session.begin():
            return await change(session)

    return run_with_sessions(obj, body)
