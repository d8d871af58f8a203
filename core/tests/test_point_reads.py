"""Point reads: inline on a SQLite file (no driver thread), an autocommit pool on PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from tongcrm.db.engine import create_point_read_engine, session_factory
from tongcrm.db.inline_sqlite import InlineConnection
from tongcrm.testing.database import TestDatabase


async def test_point_reads_see_committed_writes_and_refuse_to_write(tongcrm_db: TestDatabase) -> None:
    async with tongcrm_db.engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE point_things (id INTEGER PRIMARY KEY, name TEXT)"))
        await conn.execute(sa.text("INSERT INTO point_things VALUES (1, 'a'), (2, 'b')"))
    engine = create_point_read_engine(tongcrm_db.url, tongcrm_db.engine)
    try:
        reads = session_factory(engine, readonly=True)
        async with reads() as session, session.begin():
            rows = (await session.execute(sa.text("SELECT id, name FROM point_things ORDER BY id"))).all()
            driver = (await (await session.connection()).get_raw_connection()).driver_connection
        assert [tuple(r) for r in rows] == [(1, "a"), (2, "b")]
        if tongcrm_db.backend == "sqlite":
            assert engine is not tongcrm_db.engine
            assert isinstance(driver, InlineConnection)
            with pytest.raises(sa.exc.OperationalError, match=r"readonly|query_only|attempt to write"):
                async with reads() as session, session.begin():
                    await session.execute(sa.text("INSERT INTO point_things VALUES (3, 'c')"))
        else:
            assert engine is not tongcrm_db.engine and engine.dialect.name == "postgresql"
        # a write through the ordinary engine is visible to the next point read
        async with tongcrm_db.engine.begin() as conn:
            await conn.execute(sa.text("UPDATE point_things SET name = 'z' WHERE id = 1"))
        async with reads() as session, session.begin():
            assert (
                await session.execute(sa.text("SELECT name FROM point_things WHERE id = 1"))
            ).scalar() == "z"
    finally:
        if engine is not tongcrm_db.engine:
            await engine.dispose()
        async with tongcrm_db.engine.begin() as conn:
            await conn.execute(sa.text("DROP TABLE point_things"))
