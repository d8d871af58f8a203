"""A writing unit of work that holds its connection (tongcrm.db.held): its transaction is the driver's, the ORM
session joins it only when used, and it commits or rolls back as one — whichever of the two wrote."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import registry
from tongcrm.audit import service as audit
from tongcrm.audit.models import AuditEntry
from tongcrm.audit.service import SYSTEM
from tongcrm.db import direct, inline_sqlite, txcache
from tongcrm.db.engine import create_inline_writer
from tongcrm.db.held import KeptConnection, held_unit, holds
from tongcrm.testing.database import TestDatabase

_meta = sa.MetaData()
_items = sa.Table(
    "held_items",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20), nullable=False, unique=True),
)
_ADD = sa.insert(_items).values(name=sa.bindparam("name")).returning(_items.c.id)
_NAMES = sa.select(_items.c.name).order_by(_items.c.name)


class _Item:
    def __init__(self, name: str) -> None:
        self.name = name


registry().map_imperatively(_Item, _items)


@pytest.fixture
async def engine(tongcrm_db: TestDatabase) -> AsyncIterator[AsyncEngine]:
    """The counter's writing engine: SQLite's inline writer, PostgreSQL's ordinary engine."""
    async with tongcrm_db.engine.begin() as conn:
        await conn.run_sync(_meta.create_all)
    writer = create_inline_writer(tongcrm_db.url) or tongcrm_db.engine
    try:
        yield writer
    finally:
        if writer is not tongcrm_db.engine:
            await writer.dispose()
        async with tongcrm_db.engine.begin() as conn:
            await conn.run_sync(_meta.drop_all)


async def _names(tongcrm_db: TestDatabase) -> list[str]:
    async with tongcrm_db.engine.connect() as conn:
        return list((await conn.execute(_NAMES)).scalars())


async def test_the_counter_s_engines_hold_their_connection(
    tongcrm_db: TestDatabase, engine: AsyncEngine
) -> None:
    assert holds(engine)
    if tongcrm_db.backend == "sqlite":
        assert not holds(tongcrm_db.engine)  # aiosqlite's thread: statements through the session as before


async def test_direct_statements_commit_on_the_driver_without_the_orm(
    tongcrm_db: TestDatabase, engine: AsyncEngine
) -> None:
    async with held_unit(engine) as session:
        await direct.rows(session, _ADD, {"name": "a"})
        await direct.rows(session, _ADD, {"name": "b"})
        assert [r.name for r in await direct.rows(session, _NAMES, {})] == ["a", "b"]
        assert not session.sync_session.in_transaction()  # the ORM never began
    assert await _names(tongcrm_db) == ["a", "b"]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_the_orm_joins_the_driver_s_transaction(tongcrm_db: TestDatabase, engine: AsyncEngine) -> None:
    async with held_unit(engine) as session:
        await direct.rows(session, _ADD, {"name": "a"})
        txcache.put(session, "held.test", 42)
        # the ORM begins on the same connection: it sees the direct statement's row, uncommitted
        assert list((await session.execute(_NAMES)).scalars()) == ["a"]
        assert session.sync_session.in_transaction()
        session.add(_Item("b"))
        await direct.rows(session, _ADD, {"name": "c"})  # flushes "b" first, as session.execute would
        assert txcache.get(session, "held.test") == (True, 42)  # kept for the unit, ORM or not
    assert await _names(tongcrm_db) == ["a", "b", "c"]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("keeping", [False, True], ids=["pooled", "kept"])
@pytest.mark.parametrize("orm", [False, True])
async def test_a_failure_rolls_back_everything_and_the_connection_serves_again(
    tongcrm_db: TestDatabase, engine: AsyncEngine, orm: bool, keeping: bool
) -> None:
    """Through the pool, or on the connection SQLite's writer keeps between units of work."""
    if keeping and tongcrm_db.backend != "sqlite":
        pytest.skip("only SQLite's writer keeps its connection")
    kept = KeptConnection() if keeping else None

    async def refused() -> None:
        async with held_unit(engine, kept) as session:
            await direct.rows(session, _ADD, {"name": "a"})
            if orm:
                session.add(_Item("b"))
                await session.flush()
            await direct.rows(session, _ADD, {"name": "a"})  # refused: the name is taken

    async def failing() -> None:
        async with held_unit(engine, kept) as session:
            await direct.rows(session, _ADD, {"name": "c"})
            if orm:
                await session.execute(_NAMES)
            raise RuntimeError("the caller's own failure")

    with pytest.raises(IntegrityError):
        await refused()
    assert await _names(tongcrm_db) == []
    with pytest.raises(RuntimeError):
        await failing()
    assert await _names(tongcrm_db) == []
    for _ in range(3):  # the connections are clean: a new unit of work begins and commits on them
        async with held_unit(engine, kept) as session:
            await direct.rows(session, _ADD, {"name": f"d{_}"})
    assert await _names(tongcrm_db) == ["d0", "d1", "d2"]
    assert engine.pool.checkedout() == (1 if kept else 0)  # type: ignore[attr-defined]
    if kept is not None:
        await kept.close()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_savepoint_rolls_back_its_part_only(tongcrm_db: TestDatabase, engine: AsyncEngine) -> None:
    async def part(session: AsyncSession) -> None:
        async with session.begin_nested():
            await direct.rows(session, _ADD, {"name": "b"})
            await direct.rows(session, _ADD, {"name": "a"})

    async with held_unit(engine) as session:
        await direct.rows(session, _ADD, {"name": "a"})
        with pytest.raises(IntegrityError):
            await part(session)
        await direct.rows(session, _ADD, {"name": "c"})
    assert await _names(tongcrm_db) == ["a", "c"]


async def test_an_audit_record_staged_alone_is_chained_at_commit(
    tongcrm_db: TestDatabase, engine: AsyncEngine
) -> None:
    """Staging a record begins nothing; the unit of work still commits through the session, whose commit
    chains it."""
    async with held_unit(engine) as session:
        await direct.rows(session, _ADD, {"name": "a"})
        audit.record(session, SYSTEM, "held.test", "item", 1)
        assert not session.sync_session.in_transaction()
    async with tongcrm_db.sessions() as session:
        actions = (await session.execute(sa.select(AuditEntry.action, AuditEntry.seq))).all()
    assert [a for a, _ in actions] == ["held.test"] and actions[0][1] >= 1
    assert await _names(tongcrm_db) == ["a"]


async def test_writers_take_turns_on_sqlite_s_lock(tongcrm_db: TestDatabase, engine: AsyncEngine) -> None:
    """SQLite: ``BEGIN IMMEDIATE`` on the driver waits (in asyncio) while another connection writes, and goes
    on once it is done."""
    if tongcrm_db.backend != "sqlite":
        pytest.skip("SQLite's single writer")
    async with tongcrm_db.sessions() as other, other.begin():
        await other.execute(sa.insert(_items).values(name="first"))

        async def second() -> None:
            async with held_unit(engine) as session:
                await direct.rows(session, _ADD, {"name": "second"})

        task = asyncio.ensure_future(second())
        await asyncio.sleep(0.05)
        assert not task.done()  # waiting for the lock
    await asyncio.wait_for(task, 5)
    assert await _names(tongcrm_db) == ["first", "second"]


async def test_a_cancelled_unit_of_work_writes_nothing(tongcrm_db: TestDatabase, engine: AsyncEngine) -> None:
    """Cancelled while its statement waits (PostgreSQL: for a lock another connection holds) or between its
    statements: nothing is written, and the connection the pool hands out next is a clean one."""

    async def unit() -> None:
        async with held_unit(engine) as session:
            await direct.rows(session, _ADD, {"name": "before"})
            await asyncio.sleep(0.05)
            await direct.rows(session, _ADD, {"name": "cancelled"})

    if tongcrm_db.backend == "postgresql":
        async with tongcrm_db.engine.connect() as other:
            await other.execute(sa.text("LOCK TABLE held_items IN ACCESS EXCLUSIVE MODE"))
            task = asyncio.ensure_future(unit())
            await asyncio.sleep(0.3)
            assert not task.done(), "the statement did not wait"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await other.rollback()
    task = asyncio.ensure_future(unit())
    await asyncio.sleep(0.02)  # in its pause between the two statements
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _names(tongcrm_db) == []
    async with held_unit(engine) as session:
        await direct.rows(session, _ADD, {"name": "after"})
    assert await _names(tongcrm_db) == ["after"]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_begin_that_cannot_take_sqlite_s_lock_fails_as_the_session_s_would(
    tongcrm_db: TestDatabase, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write lock held past the busy timeout: ``OperationalError``, as the session's ``BEGIN IMMEDIATE``
    raised it, and the connection goes back to the pool clean."""
    if tongcrm_db.backend != "sqlite":
        pytest.skip("SQLite's single writer")
    monkeypatch.setattr(inline_sqlite, "BUSY_TIMEOUT_S", 0.05)

    async def blocked() -> None:
        async with held_unit(engine) as session:
            await direct.rows(session, _ADD, {"name": "blocked"})

    async with tongcrm_db.sessions() as other, other.begin():
        await other.execute(sa.insert(_items).values(name="first"))
        with pytest.raises(sa.exc.OperationalError, match="locked"):
            await blocked()
    async with held_unit(engine) as session:
        await direct.rows(session, _ADD, {"name": "after"})
    assert await _names(tongcrm_db) == ["after", "first"]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.fixture
async def kept(tongcrm_db: TestDatabase, engine: AsyncEngine) -> AsyncIterator[KeptConnection]:
    """The connection SQLite's writer keeps between units of work, handed back at the end."""
    if tongcrm_db.backend != "sqlite":
        pytest.skip("only SQLite's writer keeps its connection")
    kept = KeptConnection()
    try:
        yield kept
    finally:
        await kept.close()


def _kept_driver(kept: KeptConnection) -> object:
    assert kept._held is not None
    return kept._held.driver


async def test_a_kept_connection_serves_unit_after_unit_and_goes_back_at_close(
    tongcrm_db: TestDatabase, engine: AsyncEngine, kept: KeptConnection
) -> None:
    """SQLite's writer keeps one connection between its units of work: each commits (on the driver, or through
    the ORM when it began), leaves it in no transaction, and the next begins on the same connection."""
    async with held_unit(engine, kept) as session:
        await direct.rows(session, _ADD, {"name": "a"})
    first = _kept_driver(kept)
    async with held_unit(engine, kept) as session:
        await direct.rows(session, _ADD, {"name": "b"})
        assert list((await session.execute(_NAMES)).scalars()) == ["a", "b"]  # the ORM joins
        session.add(_Item("c"))
    async with held_unit(engine, kept) as session:
        async with session.begin_nested():
            await direct.rows(session, _ADD, {"name": "d"})
        await direct.rows(session, _ADD, {"name": "e"})
    assert _kept_driver(kept) is first
    assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    assert await _names(tongcrm_db) == ["a", "b", "c", "d", "e"]
    await kept.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_kept_connection_lost_is_replaced(
    tongcrm_db: TestDatabase, engine: AsyncEngine, kept: KeptConnection
) -> None:
    """Its file closed under a unit of work: the statement fails as the session's would (the connection
    invalidated), the unit writes nothing, and the next unit checks out a fresh connection."""

    async def lose() -> None:
        async with held_unit(engine, kept) as session:
            await direct.rows(session, _ADD, {"name": "b"})
            session.info[direct.HELD].driver._conn.close()
            await direct.rows(session, _ADD, {"name": "c"})

    async with held_unit(engine, kept) as session:
        await direct.rows(session, _ADD, {"name": "a"})
    lost = _kept_driver(kept)
    with pytest.raises(sa.exc.DBAPIError) as failure:
        await lose()
    assert failure.value.connection_invalidated
    async with held_unit(engine, kept) as session:
        await direct.rows(session, _ADD, {"name": "d"})
    assert _kept_driver(kept) is not lost
    assert await _names(tongcrm_db) == ["a", "d"]
    await kept.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_kept_connection_serves_one_unit_at_a_time(
    tongcrm_db: TestDatabase, engine: AsyncEngine, kept: KeptConnection
) -> None:
    async with held_unit(engine, kept) as session:
        with pytest.raises(RuntimeError, match="take turns"):
            async with held_unit(engine, kept):
                pass
        await direct.rows(session, _ADD, {"name": "a"})
    assert await _names(tongcrm_db) == ["a"]
