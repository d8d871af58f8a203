"""``one_of``: a list bound as one parameter, so a statement's text does not change with the list's length."""

from __future__ import annotations

from datetime import UTC, datetime
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
    from tongcrm.db.base import JSONType, UTCDateTime
    from tongcrm.db.dialect import insert_rows, rows_params

    table = sa.Table(
        "probe",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(20), unique=True),
        sa.Column("n", sa.BigInteger),
        sa.Column("flag", sa.Boolean),
        sa.Column("at", UTCDateTime()),
        sa.Column("meta", JSONType),
        sa.Column("note", sa.Text),
    )
    columns = ("code", "n", "flag", "at", "meta", "note")
    at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=ZoneInfo("Asia/Shanghai"))
    rows = [
        {"code": "a", "n": 2**62, "flag": True, "at": at, "meta": {"k": [1, "二"]}, "note": 'it\'s "x" 面膜'},
        {"code": "b", "n": -1, "flag": False, "at": None, "meta": None, "note": None},
        {"code": "c", "n": 0, "flag": None, "at": at, "meta": [], "note": "[1, 2]"},
    ]
    engine = create_async_engine("sqlite+aiosqlite://")
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
