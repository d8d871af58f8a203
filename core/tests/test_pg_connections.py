"""The connections PostgreSQL point reads keep: reused, bounded, replaced when spoilt, closed for good."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from tongcrm.db.pg_connections import ConnectionKeeper, ReaderClosed
from tongcrm.testing.database import TestDatabase

inits: list[int] = []


async def _init(conn: Any) -> None:
    inits.append(conn.get_server_pid())


@pytest.fixture
async def keeper(tongcrm_db: TestDatabase) -> AsyncIterator[ConnectionKeeper]:
    if tongcrm_db.backend != "postgresql":
        pytest.skip("connections kept across a socket: PostgreSQL only")
    inits.clear()
    k = ConnectionKeeper(
        tongcrm_db.url, max_size=2, init=_init, server_settings={"application_name": "tongcrm-keeper-test"}
    )
    yield k
    await k.close()


async def _pid(keeper: ConnectionKeeper, sleep: float = 0) -> int:
    async with keeper.connection() as conn:
        pid: int = await conn.fetchval("SELECT pg_backend_pid() FROM pg_sleep($1)", sleep)
        return pid


async def test_a_connection_is_set_up_once_and_reused(keeper: ConnectionKeeper) -> None:
    first = await _pid(keeper)
    assert await _pid(keeper) == first
    assert inits == [first] and keeper.size == 1
    async with keeper.connection() as conn:
        assert await conn.fetchval("SHOW application_name") == "tongcrm-keeper-test"


async def test_no_more_than_max_size_are_open_and_waiting_callers_get_one(keeper: ConnectionKeeper) -> None:
    pids = await asyncio.gather(*(_pid(keeper, 0.05) for _ in range(6)))
    assert len(set(pids)) == 2 and keeper.size == 2
    assert sorted(inits) == sorted(set(pids))


async def test_a_refused_statement_keeps_its_connection_anything_else_throws_it_away(
    keeper: ConnectionKeeper,
) -> None:
    first = await _pid(keeper)
    with pytest.raises(asyncpg.PostgresError):
        async with keeper.connection() as conn:
            await conn.fetchval("SELECT * FROM no_such_table")
    assert await _pid(keeper) == first  # the server refused it; the connection is fine

    slow = asyncio.ensure_future(_pid(keeper, 10))
    await asyncio.sleep(0.2)
    slow.cancel()  # mid-statement: the connection may be mid-exchange
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert keeper.size == 0
    assert await _pid(keeper) != first


async def test_an_idle_connection_the_server_ended_is_replaced_unseen(
    keeper: ConnectionKeeper, tongcrm_db: TestDatabase
) -> None:
    first = await _pid(keeper)
    killer = await asyncpg.connect(tongcrm_db.url)
    try:
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", first)
    finally:
        await killer.close()
    await asyncio.sleep(0.5)  # for the socket's end to reach the idle connection (loopback: milliseconds)
    second = await _pid(keeper)  # no caller sees the dead one
    assert second != first and keeper.size == 1


async def test_a_waiter_cancelled_after_it_was_served_passes_the_connection_on(
    keeper: ConnectionKeeper,
) -> None:
    held = [keeper.connection() for _ in range(2)]
    for cm in held:
        await cm.__aenter__()  # both places taken
    waiting = asyncio.ensure_future(_pid(keeper))
    after = asyncio.ensure_future(_pid(keeper))
    await asyncio.sleep(0)  # both queued
    await held[0].__aexit__(None, None, None)  # hands its connection to ``waiting`` ...
    waiting.cancel()  # ... which gives up before it could run
    assert await asyncio.wait_for(after, 5) in inits  # so it went on to the next in line
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await held[1].__aexit__(None, None, None)
    assert keeper.size == 2
    assert await _pid(keeper) in inits


async def test_closing_fails_waiters_and_later_callers(keeper: ConnectionKeeper) -> None:
    holders = [asyncio.ensure_future(_pid(keeper, 0.2)) for _ in range(2)]
    await asyncio.sleep(0.05)
    waiting = asyncio.ensure_future(_pid(keeper))
    await asyncio.sleep(0)
    await keeper.close()
    with pytest.raises(ReaderClosed):
        await waiting
    await asyncio.gather(*holders)  # statements under way finish; their connections are closed after
    assert keeper.size == 0
    with pytest.raises(ReaderClosed):
        await _pid(keeper)
