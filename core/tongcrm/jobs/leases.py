"""Named leases with expiry, on both databases, in one statement each.

A lease is taken with an upsert that only overwrites an expired lease or one the caller already holds, so two
workers can never both hold it, and a dead worker's lease lapses on its own.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.db import direct
from tongcrm.db.dialect import dialect_name, insert_for
from tongcrm.jobs.models import Lease


async def acquire(session: AsyncSession, key: str, holder: str, ttl: timedelta, *, now: datetime) -> bool:
    """Take or renew ``key`` for ``holder``; False when someone else holds an unexpired lease."""
    params = {"key": key, "holder": holder, "expires_at": now + ttl, "now": now}
    row = await direct.first(session, _acquire(dialect_name(session)), params)
    return row is not None and row[0] == holder


@functools.cache
def _acquire(dialect: str, prefix: str = "") -> Any:
    """The upsert of :func:`acquire`, built once per dialect (a sync renews its lease on every page): it only
    overwrites an expired lease or the holder's own. Bound as ``key``, ``holder``, ``expires_at`` and ``now``,
    each name after ``prefix``."""
    table = cast(sa.Table, Lease.__table__)
    stmt = insert_for(dialect, table).values(
        key=sa.bindparam(f"{prefix}key", type_=table.c.key.type),
        holder=sa.bindparam(f"{prefix}holder", type_=table.c.holder.type),
        expires_at=sa.bindparam(f"{prefix}expires_at", type_=table.c.expires_at.type),
    )
    now = sa.bindparam(f"{prefix}now", type_=table.c.expires_at.type)
    return stmt.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
        where=sa.or_(table.c.expires_at < now, table.c.holder == stmt.excluded.holder),
    ).returning(table.c.holder)


async def release(session: AsyncSession, key: str, holder: str) -> None:
    await session.execute(sa.delete(Lease).where(Lease.key == key, Lease.holder == holder))


async def holder_of(session: AsyncSession, key: str, *, now: datetime) -> str | None:
    row = (
        await session.execute(sa.select(Lease.holder).where(Lease.key == key, Lease.expires_at >= now))
    ).first()
    return row[0] if row else None


class NotHeld(Exception):
    """A :class:`Renewal` found the lease held by someone else."""


@dataclass(frozen=True, slots=True)
class Renewal:
    """A lease to renew inside a unit of work, by :func:`acquire` or (PostgreSQL) riding in the unit's first
    statement as the CTE :func:`renewal_cte`, one round trip less."""

    key: str
    holder: str
    ttl: timedelta
    now: datetime

    async def renew(self, session: AsyncSession) -> None:
        """Renew it in a statement of its own; :class:`NotHeld` when someone else holds it."""
        if not await acquire(session, self.key, self.holder, self.ttl, now=self.now):
            raise NotHeld(self.key)

    def params(self) -> dict[str, Any]:
        """The parameters of :func:`renewal_cte`."""
        return {
            "lease_key": self.key,
            "lease_holder": self.holder,
            "lease_expires_at": self.now + self.ttl,
            "lease_now": self.now,
        }

    def check(self, holder: str | None) -> None:
        """:class:`NotHeld` unless ``holder`` (what :func:`renewal_cte` returned) is this renewal's."""
        if holder != self.holder:
            raise NotHeld(self.key)


@functools.cache
def renewal_cte() -> Any:
    """PostgreSQL: :func:`acquire` as a data-modifying CTE named ``renewed`` with one column ``holder`` (a row
    only when the lease was taken or renewed), bound with :meth:`Renewal.params`; add it to a statement of the
    unit of work and pass what it returned to :meth:`Renewal.check`."""
    return _acquire("postgresql", "lease_").cte("renewed")
