"""The test kit's truncate between tests (``TestDatabase.truncate``) leaves the database as a new one would be.

On PostgreSQL it truncates only the tables a test may have changed (a written heap, planner statistics, a called
sequence), so each way a test can change a table is tried here: rows kept, rows rolled back, a sequence called
without a row, an ANALYZE of an empty table. If one of them were missed, the next test would see the rows, the ids
would not start at 1 again, or the planner would plan on the statistics of the test before.
"""

from __future__ import annotations

import sqlalchemy as sa
from tongcrm.db.base import metadata
from tongcrm.testing.database import TestDatabase


async def _insert(db: TestDatabase, table: str, **values: object) -> int:
    async with db.engine.begin() as conn:
        row = await conn.execute(metadata.tables[table].insert().values(**values).returning(sa.column("id")))
        return int(row.scalar_one())


async def test_truncate_empties_every_table_and_restarts_the_ids(tongcrm_db: TestDatabase) -> None:
    db = tongcrm_db
    await _insert(db, "members")
    await _insert(db, "members")
    async with (
        db.engine.connect() as conn
    ):  # a rolled-back insert: no row left, but the heap and the sequence moved
        await conn.execute(metadata.tables["jobs"].insert().values(name="rolled-back"))
        await conn.rollback()
    if db.backend == "postgresql":
        async with db.engine.begin() as conn:
            # a sequence called without any row written (as a CHECK failure before the heap insert calls it)
            await conn.execute(sa.text("SELECT nextval(pg_get_serial_sequence('call_grants', 'id'))"))
            await conn.execute(sa.text('ANALYZE "channel_accounts"'))  # statistics of an empty table

    await db.truncate()

    async with db.engine.connect() as conn:
        names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        for name in names:
            if name != "alembic_version":
                left = await conn.execute(sa.text(f'SELECT count(*) FROM "{name}"'))  # noqa: S608
                assert left.scalar_one() == 0, name
        if db.backend == "postgresql":
            analysed = await conn.execute(
                sa.text(
                    "SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace(current_schema())"
                    " AND relkind = 'r' AND reltuples >= 0"
                )
            )
            assert analysed.scalars().all() == []
            grant = await conn.execute(sa.text("SELECT nextval(pg_get_serial_sequence('call_grants', 'id'))"))
            assert grant.scalar_one() == 1
    assert await _insert(db, "members") == 1
    assert await _insert(db, "jobs", name="after") == 1


async def test_truncate_of_a_clean_database_keeps_it_usable(tongcrm_db: TestDatabase) -> None:
    await tongcrm_db.truncate()
    await tongcrm_db.truncate()
    assert await _insert(tongcrm_db, "members") == 1
