"""Planner statistics for tables that grow faster than autovacuum follows: one schedule per database.

A first channel sync or a bulk import grows members, identities and orders from (nearly) nothing to millions of
rows within minutes, faster than autovacuum's analyse follows, and not at all where autovacuum is off. Every plan
is only as good as the statistics: measured at 1,000,000 imported members whose tables had never been analysed,
PostgreSQL looked identities up by ``kind`` alone through the ``(kind, value)`` index and filtered the values
(462 ms a page of 700 values, against 3.5 ms with the index on both columns), and an orders import ran at ~1,200
orders/s; prepared statements also keep generic plans costed for near-empty tables until an ``ANALYZE``
invalidates them.

So whoever writes in bulk (ingest's :func:`tongcrm.ingest.apply.apply_orders_page`, the bulk import) reports the
rows it wrote with :func:`grown`, and the tables are analysed when the rows this process has written to that
database reach 1,000, 2,000, 4,000… — one geometric schedule per database, whichever path wrote the rows (a
bulk import whose orders partly go through ingest counts on the same schedule), so all the analyses of a run
cost at most about twice the last one. This module knows table names only; the callers name what they grow.

Why the first at 1,000 rows and not 10,000 (issue #22): until a table's first analyse, the plans of a sync's
reads are costed without statistics, and the generic plans asyncpg's prepared statements settle on early keep
them as the tables grow. Measured on a first sync on PostgreSQL (server CPU of the statement, from the backend's
``/proc/<pid>/schedstat``), the read of the page's stored orders scanned every order of the account and tested
each against the page's ids (no index condition on ``external_id``), and identity resolution's lookup scanned
``identities``: both grew linearly with the tables, to 27–38 ms of server CPU a page each just before the
analyse at 10,000 orders, and fell to 0.4–2 ms after it — about a quarter of the server's CPU for a
20,000-order sync, and a plan that differed from run to run. Analysed at 1,000 rows, the tables are small, so
the early analyses cost little (the geometric schedule still bounds the total by about twice the last).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.db.dialect import dialect_name

FIRST_ANALYSE = 1_000
#: SQLite reads at most this many index entries per index (``PRAGMA analysis_limit``): enough for the planner
#: at a fraction of a full scan.
SQLITE_ANALYSIS_LIMIT = 1000


class AnalyseSchedule:
    """When to analyse again: each time the rows counted reach the next power-of-two multiple of
    :data:`FIRST_ANALYSE`."""

    def __init__(self, first: int | None = None) -> None:
        self._next = FIRST_ANALYSE if first is None else first
        self.rows = 0

    def due(self, rows_done: int) -> bool:
        if rows_done < self._next:
            return False
        while self._next <= rows_done:
            self._next *= 2
        return True

    def add(self, rows: int) -> bool:
        """Count ``rows`` more; whether an analyse is due now."""
        self.rows += rows
        return self.due(self.rows)


#: The schedule of each database this process writes to, by its URL.
_SCHEDULES: dict[str, AnalyseSchedule] = {}


def _key(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


def grown(session: AsyncSession, rows: int) -> bool:
    """Count ``rows`` written to the session's database by this process; whether its tables are due an analyse."""
    key = _key(session.get_bind().engine.url)
    schedule = _SCHEDULES.get(key)
    if schedule is None:
        schedule = _SCHEDULES[key] = AnalyseSchedule()
    return schedule.add(rows)


def restart(url: sa.URL) -> None:
    """Start the schedule of the database at ``url`` again: its tables were emptied (the tests' truncate between
    two syncs on one database). Its count would otherwise go on from the rows written before, so the next sync
    grew the tables from nothing without an analyse until the old count doubled — 60,000 orders into a
    100,000-order sync after another — on the planner statistics of the tables before they were emptied."""
    _SCHEDULES.pop(_key(url), None)


async def analyse(
    session: AsyncSession, tables: Sequence[str], columns: Mapping[str, Sequence[str]] | None = None
) -> None:
    """Refresh the planner statistics of ``tables`` (both databases). ``columns`` may name, per table, the only
    columns whose statistics to compute (PostgreSQL; the table's row and page counts are refreshed all the
    same); SQLite analyses its indexes, whatever the columns."""
    if dialect_name(session) == "postgresql":
        named = columns or {}
        targets = [
            f'"{t}"' + (" (" + ", ".join(f'"{c}"' for c in named[t]) + ")" if t in named else "")
            for t in tables
        ]
        await session.execute(sa.text("ANALYZE " + ", ".join(targets)))
        return
    await session.execute(sa.text(f"PRAGMA analysis_limit = {SQLITE_ANALYSIS_LIMIT}"))
    for table in tables:
        await session.execute(sa.text(f'ANALYZE "{table}"'))
