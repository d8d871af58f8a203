"""``one_of``: a list bound as one parameter, so a statement's text does not change with the list's length."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from tongcrm.channels import service as accounts
from tongcrm.crypto import Vault
from tongcrm.db.dialect import among, dialect_name, one_of
from tongcrm.ingest.apply import IngestContext, apply_orders_page
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.memory import make_order


async def test_one_of_matches_lists_of_any_length_with_one_statement_text(
    tongcrm_db: TestDatabase, memory_host: PluginHost
) -> None:
    vault = Vault("dialect-test-secret-0123456789")
    ctx = IngestContext(
        host=memory_host,
        vault=vault,
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        tz=ZoneInfo("Asia/Shanghai"),
    )
    async with tongcrm_db.sessions() as s, s.begin():
        account = await accounts.create_account(
            s, memory_host, vault, "memory", "shop-a", {"token": "t0ken-value", "shop": "A"}
        )
        orders = [make_order(f"o{n}", f"buyer{n}", minutes=n) for n in range(5)]
        await apply_orders_page(s, ctx, account.id, "memory", orders, ())
    texts: set[str] = set()

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        texts.add(statement)

    async def matching(s: AsyncSession, column: str, values: list[object]) -> set[str]:
        col = Order.external_id if column == "external_id" else Order.id
        stmt = sa.select(Order.external_id).where(one_of(dialect_name(s), col, "values"))
        return set((await s.execute(stmt, {"values": values})).scalars())

    engine = tongcrm_db.engine.sync_engine
    async with tongcrm_db.sessions() as s:
        ids = {ext: id_ for ext, id_ in (await s.execute(sa.select(Order.external_id, Order.id))).all()}
        sa.event.listen(engine, "before_cursor_execute", seen)
        try:
            assert await matching(s, "external_id", []) == set()
            assert await matching(s, "external_id", ["o1"]) == {"o1"}
            assert await matching(s, "external_id", ["o0", "o3", "nope", "o4"]) == {"o0", "o3", "o4"}
            assert await matching(s, "external_id", ['it\'s "quoted"', "o2"]) == {"o2"}
            by_id = await matching(s, "id", [ids["o1"], ids["o2"], -1])
        finally:
            sa.event.remove(engine, "before_cursor_execute", seen)
    assert by_id == {"o1", "o2"}
    assert len(texts) == 2, texts  # one text per column, whatever the list's length

    # among: the values bound with the statement, one text on PostgreSQL whatever their number
    texts.clear()
    async with tongcrm_db.sessions() as s:
        sa.event.listen(engine, "before_cursor_execute", seen)
        try:
            found = [
                set(
                    (
                        await s.execute(
                            sa.select(Order.external_id).where(among(dialect_name(s), Order.id, v))
                        )
                    ).scalars()
                )
                for v in ([ids["o1"]], [ids["o0"], ids["o3"], -1], [ids["o4"], ids["o2"]])
            ]
        finally:
            sa.event.remove(engine, "before_cursor_execute", seen)
    assert found == [{"o1"}, {"o0", "o3"}, {"o4", "o2"}]
    if tongcrm_db.backend == "postgresql":
        assert len(texts) == 1, texts


async def test_insert_rows_keeps_one_text_and_returns_ids_in_row_order(tongcrm_db: TestDatabase) -> None:
    """``insert_rows``: rows of any number in one statement text (PostgreSQL: unnest of column arrays; SQLite:
    json_each of one JSON array), JSON
    and aware datetimes stored as the ORM stores them, and sequence ids ascending in row order."""
    from tongcrm.db.dialect import insert_rows, rows_params
    from tongcrm.jobs.models import OutboxEvent

    table = OutboxEvent.__table__
    columns = ("name", "payload", "occurred_at")
    at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=ZoneInfo("Asia/Shanghai"))
    texts: set[str] = set()

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "outbox_events" in statement:
            texts.add(statement)

    engine = tongcrm_db.engine.sync_engine
    returned: list[list[int]] = []
    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        async with tongcrm_db.sessions() as s, s.begin():
            dialect = dialect_name(s)
            stmt = insert_rows(dialect, table, columns, in_order=True).returning(table.c.id)
            for size in (1, 3, 7):
                rows = [
                    {
                        "name": "order_changed",
                        "payload": {"n": n, "size": size, "text": 'it\'s "x"'},
                        "occurred_at": at,
                    }
                    for n in range(size)
                ]
                result = await s.execute(stmt, rows_params(dialect, table, columns, rows))
                returned.append(sorted(result.scalars().all()))
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert len(texts) == 1, texts  # whatever the number of rows, on both databases
    async with tongcrm_db.sessions() as s:
        stored = (await s.execute(sa.select(OutboxEvent).order_by(OutboxEvent.id))).scalars().all()
    assert [e.id for e in stored] == [i for ids in returned for i in ids]
    # ascending ids follow the rows' order
    assert [(e.payload["size"], e.payload["n"]) for e in stored] == [
        (size, n) for size in (1, 3, 7) for n in range(size)
    ]
    assert all(e.payload["text"] == 'it\'s "x"' and e.occurred_at == at for e in stored)


async def test_sqlite_json_rows_store_what_an_executemany_stores() -> None:
    """SQLite's ``insert_rows`` (one JSON parameter) stores byte for byte what an executemany ``INSERT`` of the
    same rows stores: datetimes as SQLAlchemy's text, JSON (and JSON null) serialised, booleans as integers,
    quotes, non-ASCII text and NULLs as they are; upserts and ``RETURNING`` work through it."""
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.ext.asyncio import create_async_engine
    from tongcrm.db.dialect import insert_rows, rows_params
    from tongcrm.db.jsontext import json_text

    table = _probe_table("probe")
    columns = ("code", "n", "flag", "at", "meta", "note")
    at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=ZoneInfo("Asia/Shanghai"))
    rows = [
        {"code": "a", "n": 2**62, "flag": True, "at": at, "meta": {"k": [1, "二"]}, "note": 'it\'s "x" 面膜'},
        {"code": "b", "n": -1, "flag": False, "at": None, "meta": None, "note": None},
        {"code": "c", "n": 0, "flag": None, "at": at, "meta": [], "note": "[1, 2]"},
    ]
    # JSON as every engine of the app serialises it (tongcrm.db.engine), which the rows' converters follow
    engine = create_async_engine("sqlite+aiosqlite://", json_serializer=json_text)
    try:
        stored = {}
        for how in ("executemany", "json_rows"):
            async with engine.begin() as conn:
                await conn.run_sync(table.metadata.drop_all)
                await conn.run_sync(table.metadata.create_all)
                if how == "executemany":
                    await conn.execute(sqlite.insert(table), rows)
                else:
                    stmt = insert_rows("sqlite", table, columns, in_order=True).returning(table.c.id)
                    ids = (await conn.execute(stmt, rows_params("sqlite", table, columns, rows))).scalars()
                    assert sorted(ids) == [1, 2, 3]
                raw = await conn.execute(sa.text("SELECT *, typeof(n), typeof(flag), typeof(at) FROM probe"))
                stored[how] = [tuple(r) for r in raw]
        assert stored["json_rows"] == stored["executemany"]

        async with engine.begin() as conn:  # an upsert through the same SELECT
            stmt = insert_rows("sqlite", table, columns)
            stmt = stmt.on_conflict_do_update(
                index_elements=["code"], set_={"n": stmt.excluded.n}, where=table.c.n < stmt.excluded.n
            ).returning(table.c.code)
            again = [{**row, "n": 5} for row in rows]
            changed = (await conn.execute(stmt, rows_params("sqlite", table, columns, again))).scalars()
            assert sorted(changed) == ["b", "c"]
            with pytest.raises(ValueError, match="does not write"):
                rows_params("sqlite", table, columns[:2], rows)
    finally:
        await engine.dispose()


async def test_insert_rows_keeps_64_bit_integers_exact_and_refuses_wider_ones(
    tongcrm_db: TestDatabase,
) -> None:
    """The extremes of a 64-bit integer are stored exactly; one beyond them is refused with a clear error on
    both databases (SQLite's JSON would otherwise have read it as a REAL, another number). The check costs
    nothing on ordinary pages: digits in text, or a wide number inside a JSON column (text), pass; NaN is
    refused."""
    from tongcrm.db.base import JSONType
    from tongcrm.db.dialect import insert_rows, rows_params

    table = sa.Table(
        "probe_wide",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("n", sa.BigInteger),
        sa.Column("note", sa.Text),
        sa.Column("meta", JSONType),
    )
    columns = ("n", "note", "meta")
    fits = [
        {"n": 2**63 - 1, "note": "1234567890123456789012", "meta": {"big": 2**70}},
        {"n": -(2**63), "note": ",12345678901234567890,", "meta": 2**64},
        {"n": 7, "note": None, "meta": None},
    ]
    async with tongcrm_db.engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    try:
        async with tongcrm_db.sessions() as s, s.begin():
            dialect = dialect_name(s)
            stmt = insert_rows(dialect, table, columns, in_order=True)
            await s.execute(stmt, rows_params(dialect, table, columns, fits))
        async with tongcrm_db.sessions() as s:
            stored = (
                await s.execute(sa.select(table.c.n, table.c.note, table.c.meta).order_by(table.c.id))
            ).all()
        assert [tuple(r) for r in stored] == [(r["n"], r["note"], r["meta"]) for r in fits]
        assert all(type(r.n) is int for r in stored)

        for wide in (2**63, -(2**63) - 1, 10**30):
            rows = [{"n": 1, "note": "x", "meta": None}, {"n": wide, "note": "y", "meta": None}]
            with pytest.raises((OverflowError, sa.exc.DBAPIError)) as refused:
                async with tongcrm_db.sessions() as s, s.begin():
                    await s.execute(stmt, rows_params(dialect, table, columns, rows))
            if dialect == "sqlite":
                assert refused.type is OverflowError
                assert "probe_wide.n" in str(refused.value) and "64-bit" in str(refused.value)
        if dialect == "sqlite":
            with pytest.raises(ValueError, match="JSON compliant"):
                rows_params(dialect, table, columns, [{"n": float("nan"), "note": "x", "meta": None}])
        async with tongcrm_db.sessions() as s:
            assert (await s.execute(sa.select(sa.func.count()).select_from(table))).scalar_one() == len(fits)
    finally:
        async with tongcrm_db.engine.begin() as conn:
            await conn.run_sync(table.metadata.drop_all)


def test_sqlite_datetime_text_is_sqlalchemys_format() -> None:
    """UTCDateTime's SQLite bind processor (the ISO form cut to 26 characters, one C call) writes exactly the
    text SQLAlchemy's own SQLite DateTime writes for the same instant in UTC, and still refuses naive values."""
    from datetime import timedelta, timezone

    from sqlalchemy.dialects import sqlite
    from tongcrm.db.base import UTCDateTime

    ours = UTCDateTime().bind_processor(sqlite.dialect())
    theirs = sa.DateTime()._cached_bind_processor(sqlite.dialect())
    assert theirs is not None
    shanghai, new_york = ZoneInfo("Asia/Shanghai"), ZoneInfo("America/New_York")
    instants = [
        datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=shanghai),
        datetime(2026, 3, 1, 12, 30, 15, tzinfo=UTC),  # no microseconds: still written, as SQLAlchemy does
        datetime(2026, 1, 1, 0, 0, tzinfo=shanghai),  # the day before in UTC
        datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=new_york),  # the second 01:30 of the DST change
        datetime(999, 12, 31, 23, 59, 59, 1, tzinfo=UTC),  # a year below 1000: four digits
        datetime(9999, 12, 31, 15, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-8))),
        datetime(1, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=8))),
    ]
    for at in instants:
        assert ours(at) == theirs(at.astimezone(UTC).replace(tzinfo=None)), at
    assert ours(None) is None
    with pytest.raises(ValueError, match="naive"):
        ours(datetime(2026, 3, 1, 12, 30))


def test_sqlite_datetime_texts_shared_across_columns_match_each_instant() -> None:
    """The datetime converters of the SQLite rows remember a text by value across columns: equal values at a
    fixed offset (one instant written at two offsets too) get the one text, values in a zone with daylight
    saving are converted each time (the two 01:30 of a fold compare equal yet are an hour apart), and naive
    values are still refused."""
    from datetime import timedelta, timezone

    from sqlalchemy.dialects import sqlite
    from tongcrm.db import dialect
    from tongcrm.db.base import UTCDateTime
    from tongcrm.orders.models import Order

    process = UTCDateTime().bind_processor(sqlite.dialect())
    placed = dialect._converter(Order.__table__.c.placed_at, {})
    paid = dialect._converter(Order.__table__.c.paid_at, {})
    assert placed is not None and paid is not None
    beijing = timezone(timedelta(hours=8))
    at = datetime(2026, 3, 1, 20, 30, 15, 123456, tzinfo=beijing)
    assert placed(at) == process(at) == "2026-03-01 12:30:15.123456"
    assert paid(at.astimezone(UTC)) == paid(at.replace(tzinfo=beijing)) == process(at)
    assert paid(at + timedelta(microseconds=1)) == "2026-03-01 12:30:15.123457"
    new_york = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=new_york)
    second = first.replace(fold=1)
    assert first == second
    assert (placed(first), placed(second)) == (process(first), process(second))
    assert placed(first) != placed(second)
    assert placed(None) is None
    with pytest.raises(ValueError, match="naive"):
        paid(datetime(2026, 3, 1, 12, 30))


async def test_sqlite_values_rows_store_what_an_executemany_stores(tongcrm_db: TestDatabase) -> None:
    """SQLite's ``insert_rows(..., size=…)`` (a ``VALUES`` list padded to ``size`` rows, its values in one flat
    parameter) stores byte for byte what an executemany ``INSERT`` stores, run directly on the connection or
    through the session; ids ascend in row order; upserts and ``RETURNING`` work through it; one text per size;
    a value wider than 64 bits is refused."""
    if tongcrm_db.backend != "sqlite":
        pytest.skip("VALUES lists are SQLite's")
    from sqlalchemy.dialects import sqlite
    from tongcrm.db import direct
    from tongcrm.db.dialect import VALUES_ROWS, VALUES_SIZES, insert_rows, rows_params, values_size

    table = _probe_table("probe_values")
    columns = ("code", "n", "flag", "at", "meta", "note")
    at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=ZoneInfo("Asia/Shanghai"))
    rows = [
        {
            "code": "a",
            "n": 2**63 - 1,
            "flag": True,
            "at": at,
            "meta": {"k": [1, "二"]},
            "note": 'it\'s "x" 面膜',
        },
        {"code": "b", "n": -(2**63), "flag": False, "at": None, "meta": None, "note": None},
        {"code": "c", "n": 0, "flag": None, "at": at, "meta": [], "note": "[1, 2]"},
    ]
    size = values_size("sqlite", columns, len(rows))
    assert size == 4 and size in VALUES_SIZES and values_size("postgresql", columns, 3) is None
    assert values_size("sqlite", columns, VALUES_SIZES[-1] + 1) is None  # beyond: JSON rows
    assert values_size("sqlite", tuple(f"c{i}" for i in range(100)), 512) is None  # past SQLite's parameters
    stmt = insert_rows("sqlite", table, columns, in_order=True, size=size).returning(table.c.id)
    # the rows compile as one parameter (SQLAlchemy visits each bind: a 512-row upsert took ~33 ms), written
    # out as text once per size and width
    assert list(stmt.compile(dialect=sqlite.dialect()).binds) == [VALUES_ROWS]
    plan = direct.compile_plan(stmt, sqlite.dialect(), (), {})
    assert plan.flat == (0, size * (len(columns) + 1)) and plan.sql.count("?") == size * (len(columns) + 1)
    texts: set[str] = set()

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "INSERT INTO probe_values" in statement and "SELECT column2" in statement:
            texts.add(statement)

    async with tongcrm_db.engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    sa.event.listen(tongcrm_db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        stored = {}
        for how in ("executemany", "direct", "session"):
            async with tongcrm_db.sessions() as s, s.begin():
                await s.execute(table.delete())
                if how == "executemany":
                    await s.execute(sqlite.insert(table), rows)
                else:
                    params = rows_params("sqlite", table, columns, rows, size=size)
                    run = direct.rows if how == "direct" else direct._through_session
                    ids = [r[0] for r in await run(s, stmt, params)]
                    assert ids == sorted(ids) and len(ids) == 3
                raw = await s.execute(
                    sa.text("SELECT *, typeof(n), typeof(flag), typeof(at) FROM probe_values")
                )
                stored[how] = [tuple(r) for r in raw]
        assert stored["direct"] == stored["executemany"] == stored["session"]
        assert len(texts) == 1  # direct and the session ran the one text of this size

        async with tongcrm_db.sessions() as s, s.begin():  # an upsert through the same SELECT
            upsert = insert_rows("sqlite", table, columns, size=size)
            upsert = upsert.on_conflict_do_update(
                index_elements=["code"], set_={"n": upsert.excluded.n}, where=table.c.n < upsert.excluded.n
            ).returning(table.c.code)
            again = [{**row, "n": 5} for row in rows]
            changed = await direct.rows(s, upsert, rows_params("sqlite", table, columns, again, size=size))
            assert sorted(r.code for r in changed) == ["b", "c"]
            with pytest.raises(ValueError, match="does not write"):
                rows_params("sqlite", table, columns[:2], rows, size=size)
            with pytest.raises(ValueError, match="rows for a statement of"):
                rows_params("sqlite", table, columns, rows * 3, size=size)
        wide = rows_params("sqlite", table, columns, [{**rows[0], "code": "w", "n": 2**63}], size=size)
        async with tongcrm_db.sessions() as s, s.begin():
            with pytest.raises((OverflowError, sa.exc.StatementError)):
                await direct.rows(s, stmt, wide)
    finally:
        sa.event.remove(tongcrm_db.engine.sync_engine, "before_cursor_execute", seen)
        async with tongcrm_db.engine.begin() as conn:
            await conn.run_sync(table.metadata.drop_all)


def _probe_table(name: str) -> sa.Table:
    """A table with a column of each type the bulk writers convert (64-bit ints, booleans, UTC times, JSON)."""
    from tongcrm.db.base import JSONType, UTCDateTime

    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(20), unique=True),
        sa.Column("n", sa.BigInteger),
        sa.Column("flag", sa.Boolean),
        sa.Column("at", UTCDateTime()),
        sa.Column("meta", JSONType),
        sa.Column("note", sa.Text),
    )


def test_sqlite_values_share_conversions_between_a_rows_columns_of_one_type() -> None:
    """The columns of one type share their remembered conversions (an imported order binds one datetime as its
    ``placed_at``, ``paid_at`` and ``modified_at``): each value still gets exactly its own column's text, also
    when a blank column or another time stands between them, and rows given as tuples in column order
    (``sqlite_tuples``) convert as rows given by name do."""
    from sqlalchemy.dialects import sqlite
    from tongcrm.db.base import UTCDateTime
    from tongcrm.db.dialect import sqlite_tuples, sqlite_values

    table = cast(sa.Table, Order.__table__)
    columns = (
        "placed_at",
        "paid_at",
        "shipped_at",
        "completed_at",
        "modified_at",
        "ingested_at",
        "updated_at",
    )
    text = UTCDateTime().bind_processor(sqlite.dialect())
    shanghai = ZoneInfo("Asia/Shanghai")
    now = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
    rows = []
    for n in range(6):
        placed = datetime(2024, 1, 1 + n, 10, n, tzinfo=shanghai)
        other = datetime(2024, 2, 1 + n, 10, n, tzinfo=UTC)
        completed = None if n % 2 else other
        rows.append((placed, placed, None, completed, other if n % 3 == 0 else placed, now, now))
    expected = [tuple(None if v is None else text(v) for v in row) for row in rows]
    assert sqlite_values(table, columns, [dict(zip(columns, row, strict=True)) for row in rows]) == expected
    assert sqlite_tuples(table, columns, rows) == expected


def test_json_records_text_writes_offsets_and_refuses_naive_datetimes() -> None:
    """The JSON text a record set is bound as on PostgreSQL (``dialect.json_records``): aware datetimes keep
    their offset, integers stay exact, a string that only looks like a naive timestamp passes, and a naive
    datetime in a dict or a dataclass is refused, as ``UTCDateTime`` refuses it."""
    import json
    from dataclasses import dataclass
    from datetime import timedelta, timezone

    from tongcrm.db.dialect import json_records_text

    @dataclass(slots=True)
    class Record:
        at: datetime | None
        note: str

    east = datetime(2026, 3, 1, 10, 30, tzinfo=timezone(timedelta(hours=8)))
    looks_naive = "2026-03-01T10:30:00"
    text = json_records_text([{"at": east, "n": 2**62, "note": looks_naive}, Record(None, looks_naive)])
    assert json.loads(text) == [
        {"at": "2026-03-01T10:30:00+08:00", "n": 2**62, "note": looks_naive},
        {"at": None, "note": looks_naive},
    ]
    for naive in (
        {"at": east.replace(tzinfo=None), "note": "x"},
        {"at": east.replace(tzinfo=None, microsecond=90_000), "note": "x"},  # with a fraction
        Record(east.replace(tzinfo=None), "x"),
    ):
        with pytest.raises(ValueError, match="naive datetime"):
            json_records_text([naive])
