"""A serving app opens its PostgreSQL connections at start-up with its statements prepared on them
(``tongcrm.warmup.open_ahead``, issue #22, branch tillpg16), so the tills' first receipts, arriving together,
neither open connections nor prepare statements; SQLite opens nothing ahead."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from tongcrm.app import create_app
from tongcrm.auth.service import _GENERATION
from tongcrm.config import Settings
from tongcrm.db import direct, point_reads
from tongcrm.db.engine import create_engine
from tongcrm.db.pg_connections import PREPARED_AHEAD, prepare_ahead
from tongcrm.db.point_reads import create_point_reader
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.plans import written_state
from tongcrm.warmup import OPEN_AHEAD, open_ahead

_PREPARED = "SELECT statement FROM pg_prepared_statements"


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """A served app's lifespan freezes the heap after its rehearsal: the test process is given it back."""
    frozen = gc.get_freeze_count()
    yield
    if not frozen:
        gc.unfreeze()


@pytest.fixture
def fresh_plans() -> Iterator[None]:
    """The plan caches as a fresh serving process has them: empty before its start-up. Under xdist a worker has
    compiled other tests' plans (other shapes, other tables) before this one; ``open_ahead`` prepares the first
    of however many there are, which is not what the test reads as "the plans of the start-up". Given back
    after, so that other tests' compile counts are what they were."""
    reads = [(query, dict(query._plans)) for query in list(point_reads._QUERIES)]
    writes = dict(direct._PLANS.items())
    for query, _kept in reads:
        query._plans.clear()
    direct._PLANS.clear()
    yield
    for query, kept in reads:
        query._plans.update(kept)
    direct._PLANS.update(writes)


async def _prepared(conn: Any) -> set[str]:
    return {row[0] for row in await conn.fetch(_PREPARED)}


async def _accepted(db: TestDatabase, statements: list[str]) -> list[str]:
    """Of the statements compiled in this process, those this database prepares: a test run earlier in the
    same worker may have compiled some for a table of its own, which ``prepare_ahead`` leaves out."""
    conn = await asyncpg.connect(db.url)
    try:
        accepted = []
        for sql in dict.fromkeys(statements):
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError:
                continue
            accepted.append(sql)
        return accepted
    finally:
        await conn.close()


async def test_a_served_app_starts_with_its_connections_open_and_its_statements_prepared(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings, unfrozen: None, fresh_plans: None
) -> None:
    before = await written_state(tongcrm_db)
    app = create_app(tongcrm_settings, PluginHost(autoload=False), run_jobs=False, configure_logs=False)
    app.state.warm_up = True  # what settle_heap(app) sets in a serving process
    async with app.lifespan():  # on this loop: the connections are this loop's to look at
        assert await written_state(tongcrm_db) == before, "opening ahead wrote to the database"
        engine, reader = app.state.engine, app.state.point_reader
        if tongcrm_db.backend != "postgresql":
            assert await open_ahead(engine, reader, OPEN_AHEAD) == (0, 0)
            return
        assert engine.pool.checkedin() >= min(OPEN_AHEAD, engine.pool.size())
        assert reader._connections.size >= OPEN_AHEAD
        # on every connection of the engine the statements planned at start are prepared (as many as it takes)
        planned = (await _accepted(tongcrm_db, direct.planned_sql("postgresql")))[:PREPARED_AHEAD]
        assert planned, "the start-up planned nothing"
        held = [await engine.connect() for _ in range(min(OPEN_AHEAD, engine.pool.size()))]
        try:
            for conn in held:
                driver = (await conn.get_raw_connection()).driver_connection
                assert set(planned) <= await _prepared(driver)
        finally:
            for conn in held:
                await conn.close()
        # and on every connection of the point reader, its reads planned at start
        reads = set((await _accepted(tongcrm_db, point_reads.planned_sql("postgresql")))[:PREPARED_AHEAD])
        assert reads, "the rehearsal read nothing through the point reader"
        idle = list(reader._connections._idle)
        assert len(idle) >= OPEN_AHEAD
        for conn in idle:
            assert reads <= await _prepared(conn)
        # the revocation counter's shared statement too, which only callers arriving together plan: each
        # connection would otherwise parse it and introspect its array type when the tills' keys lapse together
        shared = _GENERATION.many.plan(engine.dialect, {}).sql
        for conn in idle:
            assert shared in await _prepared(conn)
        # a second start-up step finds them open: it opens nothing more
        assert (await open_ahead(engine, reader, OPEN_AHEAD))[1] == 0


async def test_a_statement_prepared_ahead_is_the_one_a_fetch_runs(tongcrm_db: TestDatabase) -> None:
    """``prepare_ahead`` fills asyncpg's own statement cache (through its private ``_get_statement``): the
    fetch after it prepares nothing on the server. Behind a transaction pooler (no statement cache) it
    prepares nothing. On SQLite there is nothing to prepare ahead: nothing of it is used."""
    if tongcrm_db.backend != "postgresql":
        engine = create_engine(tongcrm_db.url)
        reader = create_point_reader(tongcrm_db.url, engine)
        try:
            assert await open_ahead(engine, reader, OPEN_AHEAD) == (0, 0)
            assert engine.pool.checkedin() == 0
        finally:
            await reader.close()
            await engine.dispose()
        return
    sql = "SELECT $1::int + 1 AS next"
    conn = await asyncpg.connect(tongcrm_db.url)
    try:
        await _prepared(conn)  # the listing itself prepared once
        assert await prepare_ahead(conn, [sql, sql]) == 1
        ready = await _prepared(conn)
        assert sql in ready
        assert (await conn.fetchrow(sql, 41))["next"] == 42
        assert (await conn.fetch(sql, 1))[0]["next"] == 2
        assert await _prepared(conn) == ready, "the fetch prepared its statement again"
        # a statement this database refuses (compiled in the process for a table it lacks: a plugin not
        # migrated here, another test's table) is left out; the rest are prepared, the connection still serves
        other = "SELECT $1::int * 2 AS twice"
        assert await prepare_ahead(conn, ["SELECT id FROM no_such_table WHERE id = $1", other]) == 1
        assert other in await _prepared(conn)
        assert (await conn.fetchrow(other, 21))["twice"] == 42
    finally:
        await conn.close()
    uncached = await asyncpg.connect(tongcrm_db.url, statement_cache_size=0)
    try:
        assert await prepare_ahead(uncached, [sql]) == 0
        assert sql not in await _prepared(uncached)
    finally:
        await uncached.close()


_PLANS = "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"


async def test_a_statement_prepared_ahead_is_planned_once_and_not_run(tongcrm_db: TestDatabase) -> None:
    """``prepare_ahead`` also has the server plan each statement once, generically (``EXPLAIN EXECUTE``), so a
    backend's first run of it does not plan with cold catalog caches; nothing is run (no row, no sequence
    value), and the connection's own ``plan_cache_mode`` is as it was: a point reader's (generic plans) uses
    the plan made ahead, the engine's (PostgreSQL's choice) plans its first run as before."""
    if tongcrm_db.backend != "postgresql":
        pytest.skip("PostgreSQL prepares and plans; SQLite has nothing ahead (the test above)")
    write = "INSERT INTO ahead (v) VALUES ($1) RETURNING id"
    read = "SELECT v FROM ahead WHERE id = $1"
    for mode in ("auto", "force_generic_plan"):
        conn = await asyncpg.connect(tongcrm_db.url, server_settings={"plan_cache_mode": mode})
        try:
            await conn.execute("CREATE TEMP TABLE ahead (id serial PRIMARY KEY, v int NOT NULL)")
            assert await prepare_ahead(conn, [write, read]) == 2
            plans = {row["statement"]: row for row in await conn.fetch(_PLANS)}
            for sql in (write, read):
                assert (plans[sql]["generic_plans"], plans[sql]["custom_plans"]) == (1, 0), sql
            assert await conn.fetchval("SELECT count(*) FROM ahead") == 0
            assert await conn.fetchval("SELECT is_called FROM ahead_id_seq") is False, "a sequence was drawn"
            assert await conn.fetchval("SHOW plan_cache_mode") == mode
            assert await conn.fetchval(write, 7) == 1
            assert await conn.fetchval(read, 1) == 7
            plans = {row["statement"]: row for row in await conn.fetch(_PLANS)}
            expected = (2, 0) if mode == "force_generic_plan" else (1, 1)
            for sql in (write, read):
                assert (plans[sql]["generic_plans"], plans[sql]["custom_plans"]) == expected, (mode, sql)
        finally:
            await conn.close()
