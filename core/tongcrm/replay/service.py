"""Refusing replays of signed platform callbacks, for any channel.

Platforms sign a callback with a timestamp and accept a few minutes of clock skew, so a captured request stays
valid for that window and anyone holding it can send it again. A plugin that verifies a platform's signature
calls :meth:`ReplayGuard.claim` with the call's nonce (or, when the protocol has none, its signature) before
it changes anything: the first claim wins, every later one is told the call was seen. The claims live in the
database, so the guard holds across ``serve --workers`` processes and restarts; a claim is kept until the
timestamp window has passed, when the platform's own timestamp check refuses the call anyway.

A plugin receives the guard as the named dependency ``replay_guard`` and never sees a session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.db.base import utcnow
from tongcrm.db.dialect import insert
from tongcrm.replay.models import SeenCallback

__all__ = ["ReplayGuard"]

MAX_SCOPE = 120


def _digest(nonce: str) -> str:
    return hashlib.sha256(nonce.encode("utf-8")).hexdigest()


class ReplayGuard:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], clock: Callable[[], datetime] | None = None
    ) -> None:
        self._sessions = sessions
        self._clock = clock or utcnow

    async def claim(self, scope: str, nonce: str, *, until: datetime) -> bool:
        """Record the first sighting of ``nonce`` in ``scope``; False when it was already claimed.

        ``until`` is when a replay of the call would fail the platform's timestamp check by itself (the call's
        timestamp plus the allowed skew); the claim is kept that long. Claims that have expired are purged on
        the way, so the table stays the size of one window of traffic.
        """
        if not scope or len(scope) > MAX_SCOPE:
            raise ValueError(f"a replay scope is 1-{MAX_SCOPE} characters, got {len(scope)}")
        if not nonce:
            raise ValueError("an empty nonce cannot be guarded")
        if until.tzinfo is None or until.utcoffset() is None:
            raise ValueError("until must be an aware datetime")
        now = self._clock()
        table = SeenCallback.__table__
        async with self._sessions() as session, session.begin():
            await session.execute(sa.delete(SeenCallback).where(SeenCallback.expires_at <= now))
            stmt = (
                insert(session, table)
                .values(scope=scope, nonce=_digest(nonce), seen_at=now, expires_at=max(until, now))
                .on_conflict_do_nothing(index_elements=["scope", "nonce"])
                .returning(table.c.nonce)
            )
            return (await session.execute(stmt)).scalar_one_or_none() is not None

    async def release(self, scope: str, nonce: str) -> None:
        """Forget a claim whose call was not applied after all (it failed), so the platform's retry of the
        very same signed call is not mistaken for a replay."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                sa.delete(SeenCallback).where(
                    SeenCallback.scope == scope, SeenCallback.nonce == _digest(nonce)
                )
            )
