"""SQLite inline on the event loop: waits for another connection's write lock in asyncio, not in SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from tongcrm.db import inline_sqlite
from tongcrm.db.engine import create_inline_writer, session_factory

_rows = sa.Table(
    "inline_rows", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text)
)


@pytest.fixture
async def database(tmp_path: Path) -> str:
    path = tmp_path / "inline.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE inline_rows (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    conn.close()
    return str(path)


def test_only_a_sqlite_file_gets_an_inline_writer() -> None:
    assert create_inline_writer("sqlite:///:memory:") is None
    assert create_inline_writer("postgresql://u@127.0.0.1/x") is None
    assert create_inline_writer("sqlite:///file:crm.sqlite3?mode=ro&uri=true") is None


async def test_units_of_work_commit_and_roll_back(database: str) -> None:
    engine = create_inline_writer(f"sqlite:///{database}")
    assert engine is not None
    try:
        sessions = session_factory(engine)
        async with sessions() as session, session.begin():
            await session.execute(sa.insert(_rows), [{"id": 1, "v": "kept"}, {"id": 2, "v": "kept too"}])

        async def failing() -> None:
            async with sessions() as session, session.begin():
                await session.execute(sa.insert(_rows).values(id=3, v="rolled back"))
                raise RuntimeError("the unit of work fails")

        with pytest.raises(RuntimeError):
            await failing()
        async with session_factory(engine, readonly=True)() as session, session.begin():
            assert (await session.execute(sa.select(_rows.c.v).order_by(_rows.c.id))).scalars().all() == [
                "kept",
                "kept too",
            ]
    finally:
        await engine.dispose()


async def test_a_writer_waits_for_another_connections_lock_while_the_loop_runs_on(database: str) -> None:
    engine = create_inline_writer(f"sqlite:///{database}")
    assert engine is not None
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
    ticks = 0
    ten_ticks = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1
            if ticks >= 10:
                ten_ticks.set()

    async def write() -> None:
        async with session_factory(engine)() as session, session.begin():
            await session.execute(sa.insert(_rows).values(id=10, v="after the wait"))

    running = asyncio.ensure_future(ticker())
    try:
        writing = asyncio.ensure_future(write())
        await asyncio.sleep(0)  # the write starts and meets the lock
        ticks = 0
        # Ten ticks of the loop while the write waits. Counted, not timed: under load ten 10 ms sleeps may take
        # far longer than 0.1 s. Had the wait held the loop, no tick would come until the writer gave up (after
        # BUSY_TIMEOUT_S, 30 s) and the write would be done, with an error, by the time ten had.
        await asyncio.wait_for(ten_ticks.wait(), 20)
        assert not writing.done()  # still waiting, and the loop was never held
        other.execute("COMMIT")
        await asyncio.wait_for(writing, 5)
        assert other.execute("SELECT v FROM inline_rows WHERE id = 10").fetchone() == ("after the wait",)
    finally:
        running.cancel()
        other.close()
        await engine.dispose()


async def test_a_writer_gives_up_after_the_busy_timeout(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inline_sqlite, "BUSY_TIMEOUT_S", 0.2)
    engine = create_inline_writer(f"sqlite:///{database}")
    assert engine is not None
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:

        async def write() -> None:
            async with session_factory(engine)() as session, session.begin():
                await session.execute(sa.insert(_rows).values(id=11, v="never"))

        with pytest.raises(OperationalError, match="database is locked"):
            await write()
    finally:
        other.execute("ROLLBACK")
        other.close()
        await engine.dispose()


async def test_the_log_is_checkpointed_on_a_thread_not_by_the_loop_s_commits(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inline connections' own automatic checkpoint is only a backstop; every
    ``CHECKPOINT_EVERY_COMMITS``-th commit wakes the checkpointer's thread, which copies the log into the file."""
    monkeypatch.setattr(inline_sqlite, "CHECKPOINT_EVERY_COMMITS", 3)
    engine = create_inline_writer(f"sqlite:///{database}")
    assert engine is not None
    try:
        sessions = session_factory(engine)
        async with sessions() as session, session.begin():
            pages = (await session.execute(sa.text("PRAGMA wal_autocheckpoint"))).scalar_one()
            checkpointer = (
                await session.connection()
            ).sync_connection.connection.driver_connection._checkpointer
        assert pages == inline_sqlite.BACKSTOP_CHECKPOINT_PAGES
        assert checkpointer is not None and checkpointer.runs == 0  # one commit so far
        for n in range(20, 25):
            async with sessions() as session, session.begin():
                await session.execute(sa.insert(_rows).values(id=n, v="logged"))
        for _ in range(500):  # the thread runs its checkpoint while the loop goes on
            if checkpointer.runs >= 1:
                break
            await asyncio.sleep(0.01)
        assert checkpointer.runs >= 1
        other = sqlite3.connect(database, isolation_level=None)
        try:
            assert other.execute("SELECT count(*) FROM inline_rows WHERE v = 'logged'").fetchone() == (5,)
        finally:
            other.close()
    finally:
        await engine.dispose()
