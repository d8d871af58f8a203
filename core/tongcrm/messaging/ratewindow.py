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

Semantics are those of :class:`tongcrm_sms_gateway.ratelimit.SlidingWindowLimiter`: at most ``rate`` messages
granted in any half-open window of ``window`` seconds; a caller that does not fit sleeps until enough of the
oldest grants have left the window, then tries again.
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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.sessions = sessions
        self.account_id = account_id
        self._sleep = sleep

    async def acquire(self, permits: int, *, rate: int, window: float) -> None:
        if rate < 1 or window <= 0:
            raise ValueError("rate must be >= 1 and window > 0")
        if not 0 < permits <= rate:
            raise ValueError(f"cannot take {permits} permits from a window of {rate}")
        while True:
            wait = await self._try(permits, rate, timedelta(seconds=window))
            if wait is None:
                return
            await self._sleep(max(wait, 0.001))

    async def _try(self, permits: int, rate: int, span: timedelta) -> float | None:
        """Grant now and return ``None``, or return how long to wait before trying again."""
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
                await session.execute(
                    sa.insert(SendGrant).values(account_id=account, granted_at=now, permits=permits)
                )
                return None
        # wait until enough of the oldest grants have left the window
        freed, wait_until = in_window, now
        for at, count in granted:
            freed -= count
            wait_until = at + span
            if freed + permits <= rate:
                break
        return (wait_until - now).total_seconds()
