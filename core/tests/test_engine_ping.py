"""PostgreSQL engines ping a pooled connection only after it sat idle: a connection the server ended while it
was idle is replaced before anyone uses it, and one handed back a moment ago goes out without a round trip."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa
from tongcrm.db import engine as engines
from tongcrm.testing.database import TestDatabase

PID = sa.text("SELECT pg_backend_pid()")


async def test_a_connection_ended_while_idle_is_replaced_unseen(
    tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    if tongcrm_db.backend != "postgresql":
        pytest.skip("a connection across a socket: PostgreSQL only")
    engine = engines.create_engine(tongcrm_db.url, pool_size=1)
    statements: list[str] = []
    sa.event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        async with engine.connect() as conn:
            first = (await conn.execute(PID)).scalar_one()
        async with engine.connect() as conn:  # handed back a moment ago: no ping, the same connection
            assert (await conn.execute(PID)).scalar_one() == first
        killer = await asyncpg.connect(tongcrm_db.url)
        try:
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", first)
        finally:
            await killer.close()
        monkeypatch.setattr(engines, "IDLE_PING_SECONDS", 0.0)  # as if it had sat idle since
        async with engine.connect() as conn:
            assert (await conn.execute(PID)).scalar_one() != first
        assert len(statements) == 3  # pings go to the driver, not through statements
    finally:
        await engine.dispose()
