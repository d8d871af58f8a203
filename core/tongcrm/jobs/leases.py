"""Named leases with expiry, on both databases, in one statement each.

A lease is taken with an upsert that only overwrites an expired lease or one the caller already holds, so two
workers can never both hold it, and a dead worker's lease lapses on its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.db.dialect import insert
from tongcrm.jobs.models import Lease


async def acquire(session: AsyncSession, key: str, holder: str, ttl: timedelta, *, now: datetime) -> bool:
    """Take or renew ``key`` for ``holder``; False when someone else holds an unexpired lease."""
    table = Lease.__table__
    stmt = insert(session, table).values(key=key, holder=holder, expires_at=now + ttl)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
        where=sa.or_(table.c.expires_at < now, table.c.holder == holder),
    ).returning(table.c.holder)
    row = (await session.execute(stmt)).first()
    return row is not None and row[0] == holder


async def release(session: AsyncSession, key: str, holder: str) -> None:
    await session.execute(sa.delete(Lease).where(Lease.key == key, Lease.holder == holder))


async def holder_of(session: AsyncSession, key: str, *, now: datetime) -> str | None:
    row = (
        await session.execute(sa.select(Lease.holder).where(Lease.key == key, Lease.expires_at >= now))
    ).first()
    return row[0] if row else None
