"""What the CLI's command groups share: the caller the root command passes down, the actor the CLI's changes
are audited as, reading a JSON document a command is given, and running one piece of async work against the
configured database from a click command.

Each command opens its own engine and disposes of it before returning: a command is one short process, and an
engine left open would keep PostgreSQL connections (and SQLite's file) past the command's exit.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit.service import Actor
from tongcrm.config import Settings
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.errors import BadRequest
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


def load_json(source: str) -> Any:
    """The JSON document in file ``source`` (``-``: standard input); :class:`BadRequest` naming where it is not
    JSON."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{source}: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc


def run_with_reads(obj: CliObj, body: Callable[[Sessions, Sessions], Awaitable[T]]) -> T:
    """``body`` with two session factories on the configured database: one for writes, one read-only (for
    work that writes and then reads at length, e.g. an export)."""

    async def main() -> T:
        engine = create_engine(obj.settings.database_url)
        try:
            return await body(session_factory(engine), session_factory(engine, readonly=True))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def run_with_sessions(obj: CliObj, body: Callable[[Sessions], Awaitable[T]]) -> T:
    """``body`` with a session factory on the configured database (for work of several transactions)."""
    return run_with_reads(obj, lambda sessions, _reads: body(sessions))


def read(obj: CliObj, query: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``query`` in one read-only session."""

    async def body(_sessions: Sessions, reads: Sessions) -> T:
        async with reads() as session:
            return await query(session)

    return run_with_reads(obj, body)


def write(obj: CliObj, change: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``change`` in one transaction, committed when it returns."""

    async def body(sessions: Sessions) -> T:
        async with sessions() as session, session.begin():
            return await change(session)

    return run_with_sessions(obj, body)
