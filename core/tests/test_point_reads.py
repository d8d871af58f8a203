"""Point reads: statements compiled once and run on the driver give the same values an ORM read gives."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa
from tongcrm.db.base import UTCDateTime
from tongcrm.db.engine import create_engine
from tongcrm.db.point_reads import (
    AsyncpgReader,
    EngineReader,
    KeyedQuery,
    PointQuery,
    SQLiteReader,
    create_point_reader,
)
from tongcrm.testing.database import TestDatabase

_things = sa.Table(
    "point_things",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20)),
    sa.Column("seen_at", UTCDateTime()),
    sa.Column("born", sa.Date),
    sa.Column("meta", sa.JSON),
)
_BY_NAMES = PointQuery(
    sa.select(_things.c.id, _things.c.seen_at, _things.c.born, _things.c.meta, _things.c.name.label("label"))
    .where(_things.c.name.in_(sa.bindparam("names", expanding=True)), _things.c.id > sa.bindparam("after"))
    .order_by(_things.c.id)
    .limit(1),
    lists=("names",),
)
SEEN = datetime(2026, 11, 11, 0, 0, 1, 250_000, tzinfo=UTC)
_gone = sa.table("no_such_things", sa.column("name", sa.String), sa.column("id", sa.Integer))
#: by any of a caller's names, among the things after ``after`` (the group)
_BY_ANY_NAME = KeyedQuery(
    one=PointQuery(
        sa.select(_things.c.id, _things.c.seen_at, _things.c.meta)
        .where(
            _things.c.name.in_(sa.bindparam("names", expanding=True)), _things.c.id > sa.bindparam("after")
        )
        .limit(1),
        lists=("names",),
    ),
    many=PointQuery(
        sa.select(_things.c.name, _things.c.id, _things.c.seen_at, _things.c.meta).where(
            _things.c.name == sa.any_(sa.bindparam("names", type_=sa.ARRAY(sa.String))),
            _things.c.id > sa.bindparam("after"),
        )
    ),
    keys="names",
    listed=PointQuery(
        sa.select(_things.c.name, _things.c.id, _things.c.seen_at, _things.c.meta).where(
            _things.c.name.in_(sa.bindparam("names", expanding=True)), _things.c.id > sa.bindparam("after")
        ),
        lists=("names",),
    ),
)


@pytest.fixture
async def things(tongcrm_db: TestDatabase) -> TestDatabase:
    async with tongcrm_db.engine.begin() as conn:
        await conn.run_sync(_things.metadata.create_all)
        await conn.execute(
            sa.insert(_things),
            [
                {"id": 1, "name": "a", "seen_at": SEEN, "born": date(1990, 2, 28), "meta": {"k": [1, 2]}},
                {"id": 2, "name": "b", "seen_at": None, "born": None, "meta": None},
            ],
        )
    yield tongcrm_db
    async with tongcrm_db.engine.begin() as conn:
        await conn.run_sync(_things.metadata.drop_all)


async def test_rows_come_back_typed_for_each_list_length(things: TestDatabase) -> None:
    reader = create_point_reader(things.url, things.engine)
    try:
        expected = SQLiteReader if things.backend == "sqlite" else AsyncpgReader
        assert isinstance(reader, expected)
        row = await reader.first(_BY_NAMES, {"names": ["a"], "after": 0})
        assert row is not None
        assert (row.id, row.seen_at, row.born, row.meta, row.label) == (
            1,
            SEEN,
            date(1990, 2, 28),
            {"k": [1, 2]},
            "a",
        )
        assert row.seen_at.tzinfo is not None
        # another length of the list is another compiled shape; the statement's own LIMIT still applies
        row = await reader.first(_BY_NAMES, {"names": ["zz", "b", "a"], "after": 1})
        assert row is not None and (row.id, row.seen_at, row.born, row.meta) == (2, None, None, None)
        assert await reader.first(_BY_NAMES, {"names": ["nobody"], "after": 0}) is None
        # a write through the ordinary engine is visible to the next point read
        async with things.engine.begin() as conn:
            await conn.execute(sa.update(_things).where(_things.c.id == 1).values(name="z"))
        assert await reader.first(_BY_NAMES, {"names": ["a"], "after": 0}) is None
        assert (await reader.first(_BY_NAMES, {"names": ["z"], "after": 0})).id == 1
    finally:
        await reader.close()


async def test_sqlite_reader_cannot_write(things: TestDatabase) -> None:
    if things.backend != "sqlite":
        pytest.skip("query_only is the SQLite reader's guard; the PostgreSQL reader only runs SELECTs")
    reader = create_point_reader(things.url, things.engine)
    assert isinstance(reader, SQLiteReader)
    write = PointQuery(sa.select(sa.literal(1).label("one")))
    try:
        assert (await reader.first(write, {})).one == 1
        with pytest.raises(Exception, match=r"readonly|query_only|attempt to write"):
            reader._connection().execute("DELETE FROM point_things")
    finally:
        await reader.close()


async def test_in_memory_sqlite_reads_through_the_engine() -> None:
    engine = create_engine("sqlite:///:memory:")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_things.metadata.create_all)
            await conn.execute(sa.insert(_things), [{"id": 7, "name": "m", "seen_at": SEEN}])
        reader = create_point_reader("sqlite:///:memory:", engine)
        assert isinstance(reader, EngineReader)
        row = await reader.first(_BY_NAMES, {"names": ["m", "n"], "after": 0})
        assert row is not None and (row.id, row.seen_at, row.label) == (7, SEEN, "m")
    finally:
        await engine.dispose()


async def test_keyed_reads_answer_each_caller_and_share_statements(things: TestDatabase) -> None:
    reader = create_point_reader(things.url, things.engine)
    callers = [(["a"], 0), (["nobody", "b"], 0), (["a"], 0), (["nobody"], 0), (["a"], 1), (["b"], 1)]
    try:
        rows = await asyncio.gather(
            *(reader.first_by_keys(_BY_ANY_NAME, {"after": after}, names) for names, after in callers)
        )
        assert [None if r is None else r.id for r in rows] == [1, 2, 1, None, None, 2]
        assert (rows[0].seen_at, rows[0].meta) == (SEEN, {"k": [1, 2]})  # typed as a read of ``one`` is
        assert rows[0]._fields == ("id", "seen_at", "meta")
        assert isinstance(reader, AsyncpgReader | SQLiteReader)
        # callers that arrived together share a statement per group (after=0, after=1)
        assert (reader.shared_statements, reader.shared_callers) == (2, 6)
        many = await asyncio.gather(
            *(reader.first_by_keys(_BY_ANY_NAME, {"after": 0}, ["a"]) for _ in range(reader.MAX_BATCH + 1))
        )
        assert {r.id for r in many} == {1}
        assert reader.shared_statements == 4  # a full batch, then one more for the caller beyond it
        # a caller alone in its turn reads as one caller (``one``); a caller's write before it asked is seen
        async with things.engine.begin() as conn:
            await conn.execute(sa.update(_things).where(_things.c.id == 2).values(name="c"))
        alone = await reader.first_by_keys(_BY_ANY_NAME, {"after": 0}, ["b", "c"])
        assert alone is not None and alone.id == 2 and alone._fields == ("id", "seen_at", "meta")
        assert (reader.shared_statements, reader.shared_callers) == (5, 16)
    finally:
        await reader.close()


async def test_a_sqlite_keyed_query_without_a_listed_statement_reads_for_each_caller(
    things: TestDatabase,
) -> None:
    if things.backend != "sqlite":
        pytest.skip("the listed statement is the SQLite reader's")
    reader = create_point_reader(things.url, things.engine)
    assert isinstance(reader, SQLiteReader)
    alone = KeyedQuery(one=_BY_ANY_NAME.one, many=_BY_ANY_NAME.many, keys="names")
    try:
        rows = await asyncio.gather(
            *(reader.first_by_keys(alone, {"after": 0}, [n]) for n in ("a", "b", "x"))
        )
        assert [None if r is None else r.id for r in rows] == [1, 2, None]
        assert reader.shared_statements == 0
    finally:
        await reader.close()


async def test_a_shared_statement_that_fails_fails_for_every_caller_and_a_cancelled_caller_is_left_out(
    things: TestDatabase,
) -> None:
    reader = create_point_reader(things.url, things.engine)
    assert isinstance(reader, AsyncpgReader | SQLiteReader)
    try:
        broken = KeyedQuery(
            one=_BY_ANY_NAME.one,
            many=PointQuery(
                sa.select(_gone.c.name, _gone.c.id).where(
                    _gone.c.name == sa.any_(sa.bindparam("names", type_=sa.ARRAY(sa.String)))
                )
            ),
            keys="names",
            listed=PointQuery(
                sa.select(_gone.c.name, _gone.c.id).where(
                    _gone.c.name.in_(sa.bindparam("names", expanding=True))
                ),
                lists=("names",),
            ),
        )
        outcomes = await asyncio.gather(
            *(reader.first_by_keys(broken, {}, ["a"]) for _ in range(3)), return_exceptions=True
        )
        assert all("no_such_things" in str(o) for o in outcomes), outcomes

        left = asyncio.ensure_future(reader.first_by_keys(_BY_ANY_NAME, {"after": 0}, ["a"]))
        stays = asyncio.ensure_future(reader.first_by_keys(_BY_ANY_NAME, {"after": 0}, ["b"]))
        await asyncio.sleep(0)  # both have joined the batch; its statement has not gone out yet
        left.cancel()
        assert (await stays).id == 2
        assert left.cancelled()
    finally:
        await reader.close()
