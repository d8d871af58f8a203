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

import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from sqlalchemy.engine import Dialect

from tongcrm.auth.service import KEY_PREFIX
from tongcrm.errors import TongcrmError
from tongcrm.logging import get_logger
from tongcrm.members.service import lookup_key, lookup_summary

log = get_logger(__name__)

#: A well-formed key that names no key: real prefixes are hexadecimal (``create_key``), ``warmup`` is not.
REHEARSAL_KEY = f"{KEY_PREFIX}_warmup_{'0' * 32}"
#: A well-formed mainland mobile, looked up and dropped: found or not, the read has no side effect.
REHEARSAL_MOBILE = "13800000000"

#: A start-up step: builds and compiles statements for a dialect without running them; answers the plans ready.
CompileStep = Callable[[Dialect], int]
_AHEAD: list[CompileStep] = []


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
    except Exception:  # see the docstring: a rehearsal never stops a server
        log.warning("start-up rehearsal failed; first requests will compile their statements", exc_info=True)
    return time.perf_counter() - started
