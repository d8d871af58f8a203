"""Planner statistics for the tables a bulk import grows.

An import grows members, identities and orders from (nearly) nothing to millions of rows within minutes, faster
than autovacuum's analyse follows, and not at all where autovacuum is off. Every plan is only as good as the
statistics: measured at 1,000,000 imported members whose tables had never been analysed, PostgreSQL looked identities up
by ``kind`` alone through the ``(kind, value)`` index and filtered the values (462 ms a page of 700 values,
against 3.5 ms with the index on both columns), and an orders import ran at ~1,200 orders/s. So the import
analyses the tables it writes when the rows done in this run reach 10,000, 20,000, 40,000… (a geometric
schedule: the total cost stays within twice the last analyse) and once at the end.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from tongcrm.db.dialect import dialect_name
from tongcrm.identity.models import Identity
from tongcrm.members.models import Member
from tongcrm.orders.models import Order, OrderLine
from tongcrm.points.models import PointsBalance, PointsEntry, PointsLot

FIRST_ANALYSE = 10_000
#: SQLite reads at most this many index entries per index (``PRAGMA analysis_limit``): enough for the planner
#: at a fraction of a full scan.
SQLITE_ANALYSIS_LIMIT = 1000

TABLES: dict[str, tuple[str, ...]] = {
    "members": (Member.__tablename__, Identity.__tablename__),
    "orders": (
        Order.__tablename__,
        OrderLine.__tablename__,
        Identity.__tablename__,
        Member.__tablename__,
    ),
    "points": (
        PointsEntry.__tablename__,
        PointsLot.__tablename__,
        PointsBalance.__tablename__,
        Identity.__tablename__,
        Member.__tablename__,
    ),
}


class AnalyseSchedule:
    """When to analyse again: each time the rows done in this run reach the next power-of-two multiple of
    :data:`FIRST_ANALYSE`."""

    def __init__(self, first: int = FIRST_ANALYSE) -> None:
        self._next = first

    def due(self, rows_done: int) -> bool:
        if rows_done < self._next:
            return False
        while self._next <= rows_done:
            self._next *= 2
        return True


async def analyse(session: AsyncSession, kind: str) -> None:
    """Refresh the planner statistics of the tables an import of ``kind`` writes (both databases)."""
    tables = TABLES[kind]
    if dialect_name(session) == "postgresql":
        await session.execute(sa.text("ANALYZE " + ", ".join(f'"{t}"' for t in tables)))
        return
    await session.execute(sa.text(f"PRAGMA analysis_limit = {SQLITE_ANALYSIS_LIMIT}"))
    for table in tables:
        await session.execute(sa.text(f'ANALYZE "{table}"'))
