"""The ordinary engine's statements: results of any length, streamed or not, row counts and new row ids, as the
driver gives them (on SQLite through :mod:`tongcrm.db.sqlite_thread`: one hand-off to aiosqlite's thread per
statement whose result fits its prefetch)."""

from __future__ import annotations

from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from tongcrm.db import sqlite_thread
from tongcrm.testing.database import TestDatabase

_probe = sa.Table(
    "probe_thread",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("v", sa.Text, nullable=False),
)
#: longer than one prefetch, so the rest is fetched in further hand-offs
ROWS = sqlite_thread.PREFETCH * 2 + 7


@pytest.fixture
async def probe(tongcrm_db: TestDatabase) -> Any:
    async with tongcrm_db.engine.begin() as conn:
        await conn.run_sync(_probe.metadata.create_all)
    try:
        yield _probe
    finally:
        async with tongcrm_db.engine.begin() as conn:
            await conn.run_sync(_probe.metadata.drop_all)


async def test_results_of_any_length_streamed_or_not_and_counts(tongcrm_db: TestDatabase, probe: Any) -> None:
    async with tongcrm_db.sessions() as s, s.begin():
        await s.execute(sa.insert(probe), [{"v": f"{n:06d}"} for n in range(1, ROWS + 1)])
        made = await s.execute(sa.insert(probe).values(v="one more"))
        assert made.inserted_primary_key == (ROWS + 1,)  # the new row's id (SQLite: the cursor's lastrowid)
        changed = await s.execute(sa.update(probe).where(probe.c.v <= "000010").values(v=probe.c.v + "c"))
        assert changed.rowcount == 10
        returned = (
            await s.execute(sa.delete(probe).where(probe.c.id == ROWS + 1).returning(probe.c.v))
        ).all()
        assert [tuple(r) for r in returned] == [("one more",)]

    expected = [(f"{n:06d}c" if n <= 10 else f"{n:06d}",) for n in range(1, ROWS + 1)]
    select = sa.select(probe.c.v).order_by(probe.c.v)
    async with tongcrm_db.read_sessions() as s, s.begin():
        assert [tuple(r) for r in (await s.execute(select)).all()] == expected
        assert [tuple(r) for r in (await s.execute(select.limit(3))).all()] == expected[:3]
        assert (await s.execute(select.where(probe.c.id < 0))).all() == []
        # a server-side cursor streams in batches across the prefetch's end
        streamed = await s.stream(select.execution_options(yield_per=1000))
        assert [tuple(r) async for r in streamed] == expected
        # and one read in part is closed without reading the rest
        partial = await s.stream(select.execution_options(yield_per=100))
        first = await partial.fetchmany(150)
        await partial.close()
        assert [tuple(r) for r in first] == expected[:150]
        assert (await s.execute(sa.select(sa.func.count()).select_from(probe))).scalar_one() == ROWS


async def test_a_sqlite_statement_is_one_hand_off_to_aiosqlites_thread(
    tongcrm_db: TestDatabase, probe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if tongcrm_db.backend != "sqlite":
        pytest.skip("aiosqlite's thread: SQLite only")
    calls: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    async with tongcrm_db.sessions() as s, s.begin():
        raw = await (await s.connection()).get_raw_connection()
        assert isinstance(raw.driver_connection, sqlite_thread.Connection)
        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
        await s.execute(sa.insert(probe), [{"id": n, "v": "x"} for n in range(1, 4)])  # executemany
        rows = (await s.execute(sa.select(probe.c.id).order_by(probe.c.id))).scalars().all()
        await s.execute(sa.update(probe).values(v="y"))
        monkeypatch.undo()
    assert rows == [1, 2, 3]
    assert calls == ["_run_many", "_run", "_run"]  # no cursor, fetch or close round trips


async def test_the_ordinary_engine_s_connections_checkpoint_a_longer_log(tongcrm_db: TestDatabase) -> None:
    """Their automatic checkpoint waits for a longer log than SQLite's default of 1,000 pages (see
    :data:`tongcrm.db.sqlite_thread.WAL_AUTOCHECKPOINT_PAGES`)."""
    if tongcrm_db.backend != "sqlite":
        pytest.skip("SQLite's WAL only")
    async with tongcrm_db.sessions() as s, s.begin():
        pages = (await s.execute(sa.text("PRAGMA wal_autocheckpoint"))).scalar_one()
    assert pages == sqlite_thread.WAL_AUTOCHECKPOINT_PAGES == 10_000


async def test_the_ordinary_engine_s_connections_keep_a_larger_page_cache(tongcrm_db: TestDatabase) -> None:
    """Every connection of the ordinary engine on a database file keeps a page cache of
    :data:`tongcrm.db.sqlite_thread.CACHE_KIB`: SQLite's default, 2,000 KiB, made an ingest page spill dirty
    pages into the log and read evicted ones back once the indexes had grown (100,000 orders)."""
    if tongcrm_db.backend != "sqlite":
        pytest.skip("SQLite's page cache only")
    async with tongcrm_db.sessions() as s, s.begin():
        cache = (await s.execute(sa.text("PRAGMA cache_size"))).scalar_one()
    assert cache == -sqlite_thread.CACHE_KIB == -64 * 1024


async def test_an_engine_may_ask_for_another_sqlite_page_cache(tongcrm_db: TestDatabase) -> None:
    """``create_engine(…, sqlite_cache_kib=…)`` (``tongcrm import`` asks for
    :data:`tongcrm.bulk.cli.IMPORT_SQLITE_CACHE_KIB`) sets each connection's page cache over the ordinary
    engine's :data:`tongcrm.db.sqlite_thread.CACHE_KIB`."""
    if tongcrm_db.backend != "sqlite":
        pytest.skip("SQLite's page cache only")
    from tongcrm.db.engine import create_engine

    engine = create_engine(tongcrm_db.url, sqlite_cache_kib=4096)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("PRAGMA cache_size"))).scalar_one() == -4096
    finally:
        await engine.dispose()
