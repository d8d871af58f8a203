"""Call limits that hold across workers: one sliding window per key (a platform app key, say), in the database.

A platform meters an application, not a process: TOP and JOS count the calls of one app key in a window, and
every shop authorised to that app shares the allowance. With syncs of several shops on several workers, a
limiter in process memory lets each worker spend the whole allowance, and the platform answers with bans. So
the window lives in ``call_grants`` and every process that calls through the key draws from it.

Plugins never see a session: the core hands them a :class:`tongcrm.plugin.types.CallGate` in their
``ChannelContext`` and they call ``acquire(key, rate=…, window=…)`` right before each request and ``release``
the grant when the request has finished. As in :mod:`tongcrm.messaging.ratewindow`, a grant counts as being
sent *now* until it is released and from the moment its request finished afterwards, because the platform counts
on arrival: a slow request must not land together with the next window's calls. A request that got no answer
(a timeout, a cancelled call) is released ``in_doubt``: it may not have reached the platform yet — it can sit in
a socket buffer or the platform's queue after the client gave up — so dating it "finished now" would let the
next window's calls arrive with it. It stays counted as in flight for :data:`IN_FLIGHT` more instead, the bound
already assumed for any request (one permit fewer for a minute, after a failure that is rare).

Each attempt is one short transaction under a lock per key (a transaction-scoped advisory lock on PostgreSQL,
dated by the server's clock so several machines share one; SQLite's write lock and the local clock on SQLite).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.db.dialect import dialect_name
from tongcrm.limits.models import CallGrant

__all__ = ["DatabaseCallGate"]

#: First key of the advisory locks taken here (``pg_advisory_xact_lock(namespace, hashtext(key))``).
LOCK_NAMESPACE = 0x74636C6D  # "tclm"
#: Grants older than this (and than the window) are deleted as new ones are written.
RETENTION = timedelta(seconds=60)
#: How far ahead an unreleased grant is dated: longer than any platform call may take.
IN_FLIGHT = timedelta(seconds=60)
#: How often a caller blocked only by in-flight grants looks again.
POLL_SECONDS = 0.02


class DatabaseCallGate:
    """A :class:`tongcrm.plugin.types.CallGate` shared by every process on the database."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.sessions = sessions
        self._sleep = sleep

    async def acquire(self, key: str, *, rate: int, window: float = 1.0) -> CallGrantHandle:
        if rate < 1 or window <= 0:
            raise ValueError("a call limit needs rate >= 1 and window > 0")
        if not key or len(key) > 200:
            raise ValueError("a call limit key is 1 to 200 characters")
        span = timedelta(seconds=window)
        while True:
            granted, wait = await self._try(key, rate, span)
            if granted is not None:
                return CallGrantHandle(self, key, granted)
            await self._sleep(max(wait, 0.001))

    async def _lock_and_now(self, session: AsyncSession, key: str) -> datetime:
        if dialect_name(session) == "postgresql":
            await session.execute(
                sa.select(sa.func.pg_advisory_xact_lock(LOCK_NAMESPACE, sa.func.hashtext(key)))
            )
            now = (await session.execute(sa.select(sa.func.clock_timestamp()))).scalar_one()
            assert isinstance(now, datetime)
            return now.astimezone(UTC)
        return datetime.now(UTC)  # SQLite: the transaction already holds the database's write lock

    async def _try(self, key: str, rate: int, span: timedelta) -> tuple[int | None, float]:
        async with self.sessions() as session, session.begin():
            now = await self._lock_and_now(session, key)
            await session.execute(
                sa.delete(CallGrant).where(
                    CallGrant.key == key, CallGrant.granted_at <= now - max(span, RETENTION)
                )
            )
            moments = list(
                (
                    await session.execute(
                        sa.select(CallGrant.granted_at)
                        .where(CallGrant.key == key, CallGrant.granted_at > now - span)
                        .order_by(CallGrant.granted_at)
                    )
                ).scalars()
            )
            if len(moments) < rate:
                grant_id = (
                    await session.execute(
                        sa.insert(CallGrant)
                        .values(key=key, granted_at=now + IN_FLIGHT)
                        .returning(CallGrant.id)
                    )
                ).scalar_one()
                return int(grant_id), 0.0
        # the oldest finished call that must leave the window before one more fits
        finished = [at for at in moments if at <= now]
        excess = len(moments) - rate  # how many beyond the one that must leave
        if excess < len(finished):
            return None, (finished[excess] + span - now).total_seconds()
        return None, POLL_SECONDS

    async def _finish(self, key: str, grant_id: int, *, in_doubt: bool = False) -> None:
        async with self.sessions() as session, session.begin():
            now = await self._lock_and_now(session, key)
            # a request in doubt may still reach the platform: it counts as in flight for IN_FLIGHT more
            at = now + IN_FLIGHT if in_doubt else now
            await session.execute(sa.update(CallGrant).where(CallGrant.id == grant_id).values(granted_at=at))


class CallGrantHandle:
    """A :class:`tongcrm.plugin.types.RateGrant`: releasing dates the call to the moment it finished, or keeps a
    call in doubt counted as in flight (:data:`IN_FLIGHT` from then)."""

    def __init__(self, gate: DatabaseCallGate, key: str, grant_id: int) -> None:
        self._gate = gate
        self._key = key
        self.grant_id = grant_id
        self._released = False

    async def release(self, *, in_doubt: bool = False) -> None:
        if not self._released:
            self._released = True
            await self._gate._finish(self._key, self.grant_id, in_doubt=in_doubt)
