"""The send-rate window of a messenger account, kept in the database.

A messenger enforces its account's configured rate (messages in any one window, the way gateways and carriers
count) before every request. An in-memory limiter forgets with every new messenger, so back-to-back dispatcher
runs — or two processes — could each release a full window's worth within the same second. This gate keeps the
window in ``messenger_send_grants``: one row per release (moment, messages), read and written under a lock per
account, so every process that sends through the account draws from one window.

The lock is a transaction-scoped advisory lock on PostgreSQL (no row of the account is locked, so queueing and
pausing never wait on it) and SQLite's write lock (``BEGIN IMMEDIATE``) there. The moment of a release is the
database server's clock on PostgreSQL, so that processes on several machines share one clock; on SQLite every
process runs on the one machine that holds the file and its own UTC clock is used.

At most ``rate`` messages in any half-open window of ``window`` seconds, counted where the platform counts
them — on arrival. A grant is written as *in flight* (dated :data:`IN_FLIGHT` ahead, so every window sees it)
and re-dated to the moment its request finished when the messenger releases it; the request reached the
platform at or before that moment. Counting grants by the moment they were given let a slow request arrive
together with the next window's messages (2,800 in one second at a configured 2,000 in the 100,000-member
benchmark). A caller that does not fit sleeps until enough grants have left the window (or, when in-flight
ones are in the way, polls), then tries again. A process that dies with a request in flight leaves its
permits taken for at most :data:`IN_FLIGHT` plus the window.

``IN_FLIGHT`` is the default of the gate's ``in_flight``: a dispatcher whose gateway is known to answer (or drop)
a request sooner can say so, and then a request in doubt holds its permits that much less long. The tests' fake
gateway answers a timed-out request late by a second and a half, so they hold it for a few seconds rather than a
minute of the test's wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.db.dialect import dialect_name
from tongcrm.messaging.models import SendGrant

__all__ = ["DatabaseRateGate"]

#: First key of the advisory locks this module takes (``pg_advisory_xact_lock(namespace, account id)``).
LOCK_NAMESPACE = 0x74636D72  # "tcmr"
#: Grants are kept at least this long, so that a caller with a longer window still sees them.
RETENTION = timedelta(seconds=60)
#: How far ahead an in-flight grant is dated: longer than any request to a gateway may take.
IN_FLIGHT = timedelta(seconds=60)
#: How often a caller blocked by in-flight grants looks again.
POLL_SECONDS = 0.02


async def _lock_and_now(session: AsyncSession, account_id: int) -> datetime:
    if dialect_name(session) == "postgresql":
        await session.execute(sa.select(sa.func.pg_advisory_xact_lock(LOCK_NAMESPACE, account_id)))
        now = (await session.execute(sa.select(sa.func.clock_timestamp()))).scalar_one()
        assert isinstance(now, datetime)
        return now.astimezone(UTC)
    # SQLite: the session's BEGIN IMMEDIATE already holds the database's write lock
    return datetime.now(UTC)


class DatabaseRateGate:
    """A :class:`tongcrm.plugin.types.SendRateGate` for one messenger account. Each ``acquire`` attempt is
    one short transaction of its own; nothing is held while waiting."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        account_id: int,
        *,
        in_flight: timedelta = IN_FLIGHT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if in_flight <= timedelta(0):
            raise ValueError("in_flight must be positive")
        self.sessions = sessions
        self.account_id = account_id
        self.in_flight = in_flight
        self._sleep = sleep

    async def acquire(self, permits: int, *, rate: int, window: float) -> _Grant:
        if rate < 1 or window <= 0:
            raise ValueError("rate must be >= 1 and window > 0")
        if not 0 < permits <= rate:
            raise ValueError(f"cannot take {permits} permits from a window of {rate}")
        while True:
            granted, wait = await self._try(permits, rate, timedelta(seconds=window))
            if granted is not None:
                return _Grant(self, granted)
            await self._sleep(max(wait, 0.001))

    async def _try(self, permits: int, rate: int, span: timedelta) -> tuple[int | None, float]:
        """Grant now (the grant's id), or ``None`` and how long to wait before trying again."""
        account = self.account_id
        async with self.sessions() as session, session.begin():
            now = await _lock_and_now(session, account)
            await session.execute(
                sa.delete(SendGrant).where(
                    SendGrant.account_id == account, SendGrant.granted_at <= now - max(span, RETENTION)
                )
            )
            granted = (
                await session.execute(
                    sa.select(SendGrant.granted_at, SendGrant.permits)
                    .where(SendGrant.account_id == account, SendGrant.granted_at > now - span)
                    .order_by(SendGrant.granted_at)
                )
            ).all()
            in_window = sum(count for _, count in granted)
            if in_window + permits <= rate:
                grant_id = (
                    await session.execute(
                        sa.insert(SendGrant)
                        .values(account_id=account, granted_at=now + self.in_flight, permits=permits)
                        .returning(SendGrant.id)
                    )
                ).scalar_one()
                return int(grant_id), 0.0
        # wait until enough of the finished grants have left the window; in-flight ones leave when released
        freed, wait = in_window, POLL_SECONDS
        for at, count in granted:
            if at > now:
                break  # in flight: no telling when it finishes
            freed -= count
            if freed + permits <= rate:
                wait = (at + span - now).total_seconds()
                break
        return None, wait

    async def _finish(self, grant_id: int, *, in_doubt: bool = False) -> None:
        async with self.sessions() as session, session.begin():
            now = await _lock_and_now(session, self.account_id)
            # a request in doubt may still reach the platform: it counts as in flight for in_flight more
            at = now + self.in_flight if in_doubt else now
            await session.execute(sa.update(SendGrant).where(SendGrant.id == grant_id).values(granted_at=at))


class _Grant:
    """A :class:`tongcrm.plugin.types.RateGrant`: releasing it dates the grant to the moment its request
    finished (or, ``in_doubt``, keeps it in flight; see :class:`tongcrm.plugin.types.RateGrant`). Releasing twice
    changes nothing."""

    def __init__(self, gate: DatabaseRateGate, grant_id: int) -> None:
        self._gate = gate
        self.grant_id = grant_id
        self._released = False

    async def release(self, *, in_doubt: bool = False) -> None:
        if not self._released:
            self._released = True
            await self._gate._finish(self.grant_id, in_doubt=in_doubt)
