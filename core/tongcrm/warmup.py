"""A serving process's start-up rehearsal of its hottest reads, so its first requests do not pay for its start.

Why (issue #22, branch warm13): a process that has served nothing compiles each statement the first time it runs
it (:func:`tongcrm.db.direct.plan`, :meth:`tongcrm.db.point_reads.PointQuery.plan`), opens its pools' first
connections (SQLAlchemy's first connect also asks the server its version and settings) and, on PostgreSQL,
prepares each statement on the connection. At the till benchmark's size those first requests, arriving together
from every till, were the run's p99.

What runs here reads and writes nothing an operator could see: the API-key check of a well-formed key nobody
holds (the revocation counter and the live-key read), the member lookup and the till's lookup by a mobile
(results dropped). Nothing is audited, no event is emitted, no id is drawn from a sequence. The checkout's
writing statements are not run: run for real they would draw ids even when rolled back (see
docs/architecture.md, "A receipt at the counter", twenty-second pass). They are **compiled** instead, by the
steps the modules that own them register with :func:`compile_ahead` (issue #22, branch till14: the till's quick
checkout, whose first compilation set each till's first receipt; branch till15: on SQLite, where there is no
quick path, the transactional checkout's and the till cache's read): a step builds its statements as its first
request would and compiles them for the engine's dialect into the process-wide plans, without a connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tongcrm.auth.service import KEY_PREFIX
from tongcrm.counter import compile_account_read
from tongcrm.db import direct
from tongcrm.db.pg_connections import prepare_ahead
from tongcrm.errors import TongcrmError
from tongcrm.logging import get_logger
from tongcrm.members.service import lookup_key, lookup_summary

log = get_logger(__name__)

#: A well-formed key that names no key: real prefixes are hexadecimal (``create_key``), ``warmup`` is not.
REHEARSAL_KEY = f"{KEY_PREFIX}_warmup_{'0' * 32}"
#: A well-formed mainland mobile, looked up and dropped: found or not, the read has no side effect.
REHEARSAL_MOBILE = "13800000000"

#: Connections each of a serving process's PostgreSQL pools (the engine's, the point reader's) opens at start-up,
#: each with the statements compiled so far prepared on it: as many as the till benchmark's tills (8), whose
#: first receipts arrive together. More are opened on demand, as before, up to each pool's size.
OPEN_AHEAD = 8

#: A start-up step: builds and compiles statements for a dialect without running them; answers the plans ready.
CompileStep = Callable[[Dialect], int]
#: the core's own steps first (the counter's account read, read by every till's first receipt)
_AHEAD: list[CompileStep] = [compile_account_read]


def compile_ahead(step: CompileStep) -> CompileStep:
    """Register ``step`` (a decorator): a serving process runs it at start-up (:func:`warm_up`) with its engine's
    dialect. A step must not touch a database: it builds the statements its module's first request would build
    (through the same builders, so the same statement objects) and compiles them
    (:func:`tongcrm.db.direct.plan`). Registered at import: only the modules a process loads add theirs."""
    if step not in _AHEAD:
        _AHEAD.append(step)
    return step


def compile_steps(dialect: Dialect) -> int:
    """Run every registered :func:`compile_ahead` step for ``dialect``; answers the plans they hold ready. A step that
    fails is logged and skipped (its statements then compile on first use, as before)."""
    made = 0
    for step in list(_AHEAD):
        try:
            made += step(dialect)
        except Exception:  # a rehearsal never stops a server
            log.warning(
                "start-up compile step failed", step=getattr(step, "__qualname__", repr(step)), exc_info=True
            )
    return made


async def warm_up(state: Any) -> float:
    """Rehearse the hot reads through the app's own objects (``app.state``); answers the seconds it took.

    The statements compile into the caches the real calls use (plans are kept per dialect, process-wide), the
    pools open the connections the first requests will take, and the modules those reads import lazily are
    imported. A failure is logged and otherwise ignored: a database that is not reachable yet must not keep a
    server from starting, and its first requests then pay as they did before.
    """
    started = time.perf_counter()
    try:
        async with state.engine.connect():
            pass
        await state.key_verifier.verify(REHEARSAL_KEY)
        with suppress(TongcrmError):  # nobody holds it: the expected answer
            await lookup_summary(state.point_reader, state.vault, state.host, mobile=REHEARSAL_MOBILE)
        kind, values = lookup_key(state.vault, state.host, mobile=REHEARSAL_MOBILE)
        await state.counter.rehearse_lookup(kind, values)
        compile_steps(state.engine.dialect)
        await open_ahead(state.engine, state.point_reader, OPEN_AHEAD)
    except Exception:  # see the docstring: a rehearsal never stops a server
        log.warning("start-up rehearsal failed; first requests will compile their statements", exc_info=True)
    return time.perf_counter() - started


async def open_ahead(engine: AsyncEngine, reader: Any, count: int) -> tuple[int, int]:
    """On PostgreSQL, open ``count`` connections in the engine's pool and in the point reader (``reader``), all
    at once, and prepare on each the statements compiled so far for it (:func:`tongcrm.db.direct.planned_sql`,
    :func:`tongcrm.db.point_reads.planned_sql`: the rehearsal's and the :func:`compile_ahead` steps'); answers
    the engine connections readied and the reader's opened. Elsewhere nothing (SQLite opens a file).

    Why (issue #22, branch tillpg16): each till's first served receipt took ~170 ms against ~38 ms for the next
    ones, though it compiled nothing any more: the tills' first receipts arrived together and each opened its
    own connections (connect, authentication, the server's new backend, the driver's JSON codecs asked of the
    server) and prepared every statement on them, a round trip each on a backend whose catalog caches were
    cold. Done here, once per connection, before the first request; the pools keep their connections (the
    engine's up to its ``pool_size``), so the first receipts find them ready. Runs nothing but prepares: no
    row is read or written."""
    if engine.dialect.name != "postgresql" or count <= 0:
        return 0, 0
    statements = direct.planned_sql(engine.dialect.name)
    size = min(count, engine.pool.size())  # type: ignore[attr-defined]
    started = await asyncio.gather(*(engine.connect().start() for _ in range(size)), return_exceptions=True)
    held = [conn for conn in started if isinstance(conn, AsyncConnection)]
    try:
        for failed in started:
            if isinstance(failed, BaseException):
                raise failed
        readied = await asyncio.gather(*(_prepare_on(conn, statements) for conn in held))
    finally:
        for conn in held:  # held all at once so that each is another; each goes back to the pool, open
            await conn.close()
    opened = await reader.open_ahead(count)
    return len([n for n in readied if n]), opened


async def _prepare_on(conn: AsyncConnection, statements: list[str]) -> int:
    fairy = await conn.get_raw_connection()
    return await prepare_ahead(fairy.driver_connection, statements)
