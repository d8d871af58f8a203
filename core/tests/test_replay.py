"""The replay guard: a signed callback's nonce is claimed once per scope, in the database, for its window."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from tongcrm.replay.models import SeenCallback
from tongcrm.replay.service import ReplayGuard
from tongcrm.testing.database import TestDatabase

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def _rows(db: TestDatabase) -> list[tuple[str, datetime]]:
    async with db.sessions() as session:
        rows = await session.execute(sa.select(SeenCallback.scope, SeenCallback.expires_at))
        return sorted((r.scope, r.expires_at) for r in rows)


async def test_a_nonce_is_claimed_once_per_scope(tongcrm_db: TestDatabase) -> None:
    guard = ReplayGuard(tongcrm_db.sessions, Clock())
    until = T0 + timedelta(minutes=10)
    assert await guard.claim("taobao:a", "SIGN1", until=until)
    assert not await guard.claim("taobao:a", "SIGN1", until=until)
    # a second guard (another process) shares the claims: they live in the database
    assert not await ReplayGuard(tongcrm_db.sessions, Clock()).claim("taobao:a", "SIGN1", until=until)
    assert await guard.claim("taobao:b", "SIGN1", until=until)  # another account
    assert await guard.claim("taobao:a", "SIGN2", until=until)
    async with tongcrm_db.sessions() as session:
        stored = set((await session.execute(sa.select(SeenCallback.nonce))).scalars())
    assert "SIGN1" not in stored and all(len(n) == 64 for n in stored)  # digests, not request data


async def test_claims_expire_with_the_window_and_are_purged(tongcrm_db: TestDatabase) -> None:
    clock = Clock()
    guard = ReplayGuard(tongcrm_db.sessions, clock)
    assert await guard.claim("s", "old", until=T0 + timedelta(minutes=10))
    assert await guard.claim("s", "late", until=T0 + timedelta(minutes=30))
    clock.now = T0 + timedelta(minutes=10, seconds=1)
    assert await guard.claim("s", "new", until=clock.now + timedelta(minutes=10))
    assert [e for _, e in await _rows(tongcrm_db)] == sorted(
        [T0 + timedelta(minutes=30), clock.now + timedelta(minutes=10)]
    )
    assert not await guard.claim("s", "late", until=T0 + timedelta(minutes=30))
    # past its window the platform's timestamp check refuses the call; the guard no longer needs the row
    assert await guard.claim("s", "old", until=clock.now + timedelta(minutes=1))


async def test_a_released_claim_can_be_claimed_again(tongcrm_db: TestDatabase) -> None:
    guard = ReplayGuard(tongcrm_db.sessions, Clock())
    until = T0 + timedelta(minutes=10)
    assert await guard.claim("s", "n", until=until)
    await guard.release("s", "n")
    assert await guard.claim("s", "n", until=until)
    assert not await guard.claim("s", "n", until=until)


async def test_concurrent_claims_have_one_winner(tongcrm_db: TestDatabase) -> None:
    guards = [ReplayGuard(tongcrm_db.sessions, Clock()) for _ in range(6)]
    won = await asyncio.gather(*(g.claim("s", "same", until=T0 + timedelta(minutes=5)) for g in guards))
    assert sorted(won) == [False] * 5 + [True]


@pytest.mark.parametrize(
    ("scope", "nonce", "until", "message"),
    [
        ("", "n", T0, "scope"),
        ("x" * 121, "n", T0, "scope"),
        ("s", "", T0, "empty nonce"),
        ("s", "n", datetime(2026, 12, 1, 8, 0), "aware"),
    ],
)
async def test_bad_claims_are_programming_errors(
    tongcrm_db: TestDatabase, scope: str, nonce: str, until: datetime, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await ReplayGuard(tongcrm_db.sessions, Clock()).claim(scope, nonce, until=until)
